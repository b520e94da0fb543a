// Builds the demo page into gateway/assets/demo (committed; the gateway embeds it):
//   app.js      src/main.ts + the client's TypeScript source, one minified IIFE
//   app.css     app.css, minified
//   index.html  copied, with ?v=<content hash> on the asset links
//   favicon.svg copied
// The output depends only on the sources and the pinned esbuild: no paths, no
// dates, no source map. `--check` builds in memory and fails if the committed
// files differ (or the folder holds any other file).
import { build } from 'esbuild';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const demo = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const out = resolve(demo, '../../gateway/assets/demo');
const check = process.argv.includes('--check');

const common = { bundle: true, minify: true, write: false, legalComments: 'none', logLevel: 'warning', absWorkingDir: demo };
const js = await build({
  ...common,
  entryPoints: ['src/main.ts'],
  format: 'iife',
  target: ['es2020'],
  outfile: 'app.js',
});
const css = await build({
  ...common,
  entryPoints: ['app.css'],
  target: ['chrome100', 'firefox100', 'safari15'],
  outfile: 'app.css',
});

const files = new Map();
files.set('app.js', Buffer.from(js.outputFiles[0].contents));
files.set('app.css', Buffer.from(css.outputFiles[0].contents));
files.set('favicon.svg', readFileSync(join(demo, 'favicon.svg')));
const v = (name) => createHash('sha256').update(files.get(name)).digest('hex').slice(0, 10);
let html = readFileSync(join(demo, 'index.html'), 'utf8');
for (const name of ['app.js', 'app.css', 'favicon.svg']) {
  const ref = `/demo/${name}"`;
  if (!html.includes(ref)) throw new Error(`index.html does not reference ${ref}`);
  html = html.replace(ref, `/demo/${name}?v=${v(name)}"`);
}
files.set('index.html', Buffer.from(html));

let total = 0;
let totalGz = 0;
const rows = [];
for (const [name, data] of files) {
  const gz = gzipSync(data, { level: 9 }).length;
  total += data.length;
  totalGz += gz;
  rows.push(`${name.padEnd(12)} ${String(data.length).padStart(7)} B  ${String(gz).padStart(6)} B gzip`);
}
rows.push(`${'total'.padEnd(12)} ${String(total).padStart(7)} B  ${String(totalGz).padStart(6)} B gzip`);

if (check) {
  const bad = [];
  for (const [name, data] of files) {
    const p = join(out, name);
    if (!existsSync(p) || !readFileSync(p).equals(data)) bad.push(name);
  }
  const extra = existsSync(out) ? readdirSync(out).filter((f) => !files.has(f)) : [];
  if (bad.length || extra.length) {
    console.error(
      `gateway/assets/demo is not the build of clients/demo:` +
        (bad.length ? ` differs: ${bad.join(', ')};` : '') +
        (extra.length ? ` extra files: ${extra.join(', ')};` : '') +
        ` run \`npm run build\` in clients/demo and commit the result`,
    );
    process.exit(1);
  }
  console.log('gateway/assets/demo is up to date');
} else {
  mkdirSync(out, { recursive: true });
  for (const [name, data] of files) writeFileSync(join(out, name), data);
  console.log(`built ${out}`);
}
console.log(rows.join('\n'));

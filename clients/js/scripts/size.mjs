// Bundles src/index.ts with esbuild (ESM, minified), gzips it, prints the sizes.
import { build } from 'esbuild';
import { gzipSync } from 'node:zlib';

const result = await build({
  entryPoints: ['src/index.ts'],
  bundle: true,
  minify: true,
  format: 'esm',
  target: 'es2020',
  write: false,
});
const code = result.outputFiles[0].contents;
const gz = gzipSync(code, { level: 9 });
console.log(`minified: ${code.length} bytes`);
console.log(`minified + gzip: ${gz.length} bytes`);

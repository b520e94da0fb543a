// Development server for the built page, laid out as the gateway serves it:
// GET / is gateway/assets/demo/index.html, GET /demo/<file> any other file of
// that folder. It serves no WebSocket: open the page with
// ?gateways=ws://<a gateway>/ws. It sends the Content-Security-Policy the
// gateway sends, so the page is tried under the same rules.
//
//   node scripts/serve.mjs [port]      (default 0: any free port; printed)
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { dirname, extname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const dir = resolve(dirname(fileURLToPath(import.meta.url)), '../../../gateway/assets/demo');
const types = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json',
  '.map': 'application/json',
};

const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
  "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const server = createServer(async (req, res) => {
  const path = new URL(req.url ?? '/', 'http://x').pathname;
  const name = path === '/' ? 'index.html' : /^\/demo\/([A-Za-z0-9._-]+)$/.exec(path)?.[1];
  if (req.method !== 'GET' || !name || name.startsWith('.')) return res.writeHead(404).end('not found');
  try {
    const body = await readFile(resolve(dir, name));
    res.writeHead(200, {
      'content-type': types[extname(name)] ?? 'application/octet-stream',
      'cache-control': 'no-cache',
      'content-security-policy': CSP,
    });
    res.end(body);
  } catch {
    res.writeHead(404).end('not found');
  }
});
server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  console.log(`serving ${dir} at http://127.0.0.1:${server.address().port}/`);
});

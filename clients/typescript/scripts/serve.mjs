#!/usr/bin/env node
// A tiny static server for the demo chat page (no dependencies): `/` serves demo/,
// `/sdk/` serves dist/ (the SDK built by `npm run build` and `npm run size`).
//   node scripts/serve.mjs [--host 127.0.0.1] [--port 8081]
// Prints "serving http://HOST:PORT/" once listening (port 0 picks a free one).
import { createReadStream, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const mounts = [
  ['/sdk/', join(root, 'dist')],
  ['/', join(root, 'demo')],
];
const types = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.map': 'application/json',
  '.svg': 'image/svg+xml',
};
const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const host = arg('--host', '127.0.0.1');
const port = Number(arg('--port', '8081'));

const server = createServer((req, res) => {
  const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
  const [prefix, dir] = mounts.find(([p]) => path.startsWith(p));
  const file = normalize(join(dir, path.slice(prefix.length) || 'index.html'));
  let size = -1;
  try {
    if (file.startsWith(dir + sep)) size = statSync(file).isFile() ? statSync(file).size : -1;
  } catch {}
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405).end();
  } else if (size < 0) {
    res.writeHead(404, { 'content-type': 'text/plain' }).end(`not found: ${path}\n`);
  } else {
    res.writeHead(200, {
      'content-type': types[extname(file)] ?? 'application/octet-stream',
      'content-length': size,
      'cache-control': 'no-store',
    });
    if (req.method === 'HEAD') res.end();
    else createReadStream(file).pipe(res);
  }
});
server.listen(port, host, () => {
  console.log(`serving http://${host}:${server.address().port}/`);
});

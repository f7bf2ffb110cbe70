// Bundles the SDK into one minified ES module (dist/courier.min.js, what the demo page
// loads) and prints its size, raw and gzipped (level 9). `npm run size`.
import { build } from 'esbuild';
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const outfile = `${root}dist/courier.min.js`;
await build({
  entryPoints: [`${root}src/index.ts`],
  outfile,
  bundle: true,
  minify: true,
  format: 'esm',
  target: 'es2022',
  legalComments: 'none',
  logLevel: 'warning',
});
const code = readFileSync(outfile);
const gzipped = gzipSync(code, { level: 9 }).length;
console.log(`dist/courier.min.js: ${code.length} bytes minified, ${gzipped} bytes minified + gzipped`);
if (process.argv.includes('--check') && gzipped > 10 * 1024) {
  console.error('size: over the 10 KB budget');
  process.exit(1);
}

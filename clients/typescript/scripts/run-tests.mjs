// Runs the compiled tests (build/test/): the SDK tests in Node, then the browser
// tests. Node 20's own WebSocket (undici) needs --experimental-websocket; from
// Node 22 it is on by default.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const major = Number(process.versions.node.split('.')[0]);
const flags = major < 22 ? ['--experimental-websocket'] : [];
const suites = process.argv.slice(2).length ? process.argv.slice(2) : ['build/test/sdk/', 'build/test/browser/'];
for (const suite of suites) {
  console.log(`== node --test ${suite}`);
  const run = spawnSync(process.execPath, [...flags, '--test', '--test-timeout', '120000', '--test-reporter', 'spec', suite], {
    cwd: root,
    stdio: 'inherit',
  });
  if (run.status !== 0) process.exit(run.status ?? 1);
}

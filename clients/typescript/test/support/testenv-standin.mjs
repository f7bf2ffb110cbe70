#!/usr/bin/env node
// A minimal stand-in for `courier-testenv` (TESTENV-SPEC.md), used only while the real
// binary (the Rust test kit's) is not built: same command line, same protocol. Delete
// it when courier-testenv is on main. Single Redis only.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { createInterface } from 'node:readline';

const args = process.argv.slice(2);
let courierBin = 'target/debug/courier';
const extraEnv = {};
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--courier-bin') courierBin = args[++i];
  else if (args[i] === '--env') {
    const [k, ...v] = args[++i].split('=');
    extraEnv[k] = v.join('=');
  } else if (args[i] === '--redis') i++;
}
const dir = mkdtempSync(`${tmpdir()}/courier-testenv-`);
const freePort = () =>
  new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
const until = async (what, check) => {
  for (let i = 0; i < 200; i++) {
    if (await check().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
};

// RESP: one request at a time.
function redis(port, words) {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let buffer = Buffer.alloc(0);
    socket.on('error', reject);
    socket.on('data', (chunk) => {
      buffer = Buffer.concat([buffer, chunk]);
      const parsed = parse(buffer, 0);
      if (parsed) {
        socket.end();
        resolve(parsed[0]);
      }
    });
    socket.write(`*${words.length}\r\n${words.map((w) => `$${Buffer.byteLength(w)}\r\n${w}\r\n`).join('')}`);
  });
}
function parse(buf, at) {
  const end = buf.indexOf('\r\n', at);
  if (end < 0) return undefined;
  const line = buf.toString('utf8', at + 1, end);
  const next = end + 2;
  switch (String.fromCharCode(buf[at])) {
    case '+': return [line, next];
    case '-': return [{ error: line }, next];
    case ':': return [Number(line), next];
    case '$': {
      const n = Number(line);
      if (n < 0) return [null, next];
      return buf.length >= next + n + 2 ? [buf.toString('utf8', next, next + n), next + n + 2] : undefined;
    }
    case '*': {
      const n = Number(line);
      if (n < 0) return [null, next];
      const items = [];
      let pos = next;
      for (let i = 0; i < n; i++) {
        const item = parse(buf, pos);
        if (!item) return undefined;
        items.push(item[0]);
        pos = item[1];
      }
      return [items, pos];
    }
  }
  return undefined;
}

const redisPort = await freePort();
const redisProc = spawn('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' });
await until('redis', async () => (await redis(redisPort, ['PING'])) === 'PONG');
const port = await freePort();
const log = `${dir}/courier.log`;
const secret = extraEnv.COURIER_JWT_SECRET ?? 'test-secret';
let courier;
async function start() {
  const { openSync } = await import('node:fs');
  const out = openSync(log, 'a');
  courier = spawn(courierBin, [], {
    stdio: ['ignore', out, out],
    env: { ...process.env, RUST_LOG: 'info', COURIER_LISTEN: `127.0.0.1:${port}`, COURIER_REDIS_URL: `redis://127.0.0.1:${redisPort}`, COURIER_JWT_SECRET: secret, ...extraEnv },
  });
  await until('courier', async () => (await fetch(`http://127.0.0.1:${port}/healthz`)).ok);
  return courier.pid;
}
const exited = (proc) => (proc.exitCode !== null || proc.signalCode !== null ? Promise.resolve() : new Promise((r) => proc.once('exit', r)));
async function kill(signal) {
  courier.kill(signal);
  await exited(courier);
  return courier.exitCode;
}
function token(id, name, ttl) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const claims = { id: Number(id), username: name };
  if (ttl !== undefined) claims.exp = Math.floor(Date.now() / 1000) + Number(ttl);
  const input = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
}
const words = (line) => (line.match(/"(?:[^"\\]|\\.)*"|\S+/g) ?? []).map((w) => (w.startsWith('"') ? JSON.parse(w) : w));

function shutdown() {
  courier?.kill('SIGKILL');
  redisProc.kill('SIGKILL');
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

const pid = await start();
console.log(JSON.stringify({ ws: `ws://127.0.0.1:${port}/ws`, http: `http://127.0.0.1:${port}`, redis: `redis://127.0.0.1:${redisPort}`, secret, pid }));
const commands = {
  kill: async () => ({ code: await kill('SIGKILL') }),
  start: async () => ({ pid: await start() }),
  restart: async () => (await kill('SIGKILL'), { pid: await start() }),
  stop: async () => ({ code: await kill('SIGTERM') }),
  redis: async (w) => {
    const reply = await redis(redisPort, w);
    if (reply && reply.error) throw new Error(reply.error);
    return { reply };
  },
  chat: async ([id, ...members]) => (await redis(redisPort, ['DEL', `chat:${id}`]), await redis(redisPort, ['RPUSH', `chat:${id}`, ...members]), {}),
  token: async ([id, name, ttl]) => ({ token: token(id, name, ttl) }),
  log: async () => ({ path: log }),
  quit: async () => shutdown(),
};
const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  const [cmd, ...rest] = words(line);
  try {
    const answer = await commands[cmd](rest);
    console.log(JSON.stringify({ ok: true, ...answer }));
  } catch (e) {
    console.log(JSON.stringify({ ok: false, error: String(e?.message ?? e) }));
  }
}
shutdown();

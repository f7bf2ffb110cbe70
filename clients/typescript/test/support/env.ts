/**
 * A private Redis and courier for one test file, through `courier-testenv`
 * (testkit/src/bin/courier-testenv): the Rust test kit's process front-end, so these
 * tests start servers exactly as the Rust tests do.
 */

import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { within } from './util.js';

/** The repository root (the directory with Cargo.toml above this file). */
export const repoRoot = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'Cargo.toml'))) dir = dirname(dir);
  return dir;
})();

/** Where cargo put the debug builds: `CARGO_TARGET_DIR` (relative to the root) or `target/`. */
const debugDir = join(resolve(repoRoot, process.env.CARGO_TARGET_DIR ?? 'target'), 'debug');

interface Ready {
  ws: string;
  http: string;
  redis: string;
  secret: string;
  pid: number;
}

type Answer = { ok: true; [key: string]: unknown } | { ok: false; error: string };

export class TestEnv {
  readonly #process: ChildProcessWithoutNullStreams;
  readonly #waiting: ((answer: Answer) => void)[] = [];
  #tail = Promise.resolve();

  private constructor(
    process: ChildProcessWithoutNullStreams,
    lines: AsyncIterableIterator<string>,
    readonly ready: Ready,
  ) {
    this.#process = process;
    void (async () => {
      for await (const line of lines) this.#waiting.shift()?.(JSON.parse(line) as Answer);
    })();
  }

  /** Starts Redis and courier; `env` adds courier settings (e.g. COURIER_ACK_TIMEOUT_MS). */
  static async start(env: Record<string, string | number> = {}): Promise<TestEnv> {
    const binary = process.env.COURIER_TESTENV ?? join(debugDir, 'courier-testenv');
    const args = ['--courier-bin', join(debugDir, 'courier')];
    for (const [key, value] of Object.entries(env)) args.push('--env', `${key}=${value}`);
    if (!existsSync(binary)) {
      throw new Error(`${binary} is not built: cargo build -p courier-testkit --bin courier-testenv`);
    }
    const child = spawn(binary, args, { cwd: repoRoot });
    child.stderr.on('data', (chunk: Buffer) => process.stderr.write(chunk));
    const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
    const first = await within(60_000, 'courier-testenv to be ready', lines.next());
    if (first.done) throw new Error('courier-testenv exited before it was ready');
    return new TestEnv(child, lines, JSON.parse(first.value) as Ready);
  }

  /** One command; answers in order. Rejects when the answer is `ok: false`. */
  command(line: string): Promise<Record<string, unknown>> {
    const answer = new Promise<Answer>((resolve) => this.#waiting.push(resolve));
    this.#tail = this.#tail.then(() => void this.#process.stdin.write(`${line}\n`));
    return answer.then((a) => {
      if (!a.ok) throw new Error(`courier-testenv ${line.split(' ')[0]}: ${a.error}`);
      return a;
    });
  }

  get ws(): string {
    return this.ready.ws;
  }

  async token(id: number, name: string, ttlSeconds?: number): Promise<string> {
    const answer = await this.command(`token ${id} ${name}${ttlSeconds === undefined ? '' : ` ${ttlSeconds}`}`);
    return answer.token as string;
  }

  async chat(id: number, ...members: number[]): Promise<void> {
    await this.command(`chat ${id} ${members.join(' ')}`);
  }

  async redis(...words: (string | number)[]): Promise<unknown> {
    const answer = await this.command(`redis ${words.map((w) => JSON.stringify(String(w))).join(' ')}`);
    return answer.reply;
  }

  /** SIGKILL courier. */
  async killCourier(): Promise<void> {
    await this.command('kill');
  }

  /** Starts courier again, on the same port. */
  async startCourier(): Promise<void> {
    await this.command('start');
  }

  /** Stops courier and Redis. */
  async quit(): Promise<void> {
    const exited = new Promise((resolve) => this.#process.once('exit', resolve));
    this.#process.stdin.end('quit\n');
    await exited;
  }
}

/**
 * The demo chat page in Debian's Chromium, driven by playwright-core (no browser
 * download): the page's static server, the browser, and what a page shows.
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { repoRoot, type TestEnv } from './env.js';
import { within } from './util.js';

/** The flags Chromium needs here (root, no GPU, a closed network): rust-svc.md. */
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export async function launchBrowser(): Promise<Browser> {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: CHROMIUM_ARGS,
  });
}

/** scripts/serve.mjs on a free port: the demo page and the SDK bundle. */
export async function servePage(): Promise<{ url: string; stop: () => void }> {
  const server: ChildProcess = spawn(process.execPath, [join(repoRoot, 'clients/typescript/scripts/serve.mjs'), '--port', '0'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines = createInterface({ input: server.stdout! })[Symbol.asyncIterator]();
  const first = await within(10_000, 'the page server', lines.next());
  const url = /serving (\S+)/.exec(String(first.value))?.[1];
  if (!url) throw new Error(`the page server said: ${String(first.value)}`);
  return { url, stop: () => server.kill() };
}

/** One user's chat page. */
export class ChatPage {
  readonly errors: string[] = [];

  private constructor(readonly page: Page) {
    page.on('pageerror', (error) => this.errors.push(error.message));
  }

  /** Opens the page in a new browser context (its own IndexedDB and localStorage, like
   * another browser), or in `context` (another tab of the same browser). */
  static async open(
    where: Browser | BrowserContext,
    base: string,
    env: TestEnv,
    token: string,
    chat: number,
    device?: string,
  ): Promise<ChatPage> {
    const context = 'newContext' in where ? await where.newContext({ viewport: { width: 560, height: 720 } }) : where;
    const page = await context.newPage();
    const chatPage = new ChatPage(page);
    const query = new URLSearchParams({ token, chat: String(chat), ws: env.ws, ...(device ? { device } : {}) });
    await page.goto(`${base}?${query}`);
    return chatPage;
  }

  async waitForState(state: string, timeout = 20_000): Promise<void> {
    await this.page.waitForSelector(`#state[data-state="${state}"]`, { timeout });
  }

  /** Types a message and presses Enter, as a user does. */
  async type(text: string): Promise<void> {
    await this.page.fill('#text', text);
    await this.page.press('#text', 'Enter');
  }

  /** The messages the page shows from others, in order. */
  incoming(): Promise<{ id: number; sender: number; text: string }[]> {
    return this.page.$$eval('li.msg.in', (items) =>
      items.map((li) => ({
        id: Number((li as HTMLElement).dataset.id),
        sender: Number((li as HTMLElement).dataset.sender),
        text: li.querySelector('.bubble')!.textContent!,
      })),
    );
  }

  /** The page's own messages and their status, in order. */
  outgoing(): Promise<{ text: string; status: string; stored: boolean }[]> {
    return this.page.$$eval('li.msg.out', (items) =>
      items.map((li) => ({
        text: li.querySelector('.bubble')!.textContent!,
        status: (li as HTMLElement).dataset.status!,
        stored: (li as HTMLElement).dataset.stored === 'true',
      })),
    );
  }

  /** Waits until the page shows `count` incoming messages. */
  async waitForIncoming(count: number, timeout = 30_000): Promise<void> {
    await this.page.waitForFunction((n) => document.querySelectorAll('li.msg.in').length >= n, count, { timeout });
  }

  /** Waits until every own message shown is in one of `statuses` (and there are `count`). */
  async waitForOutgoing(count: number, statuses: string[], timeout = 30_000): Promise<void> {
    await this.page.waitForFunction(
      ([n, wanted]) => {
        const items = [...document.querySelectorAll<HTMLElement>('li.msg.out')];
        return items.length === n && items.every((li) => wanted.includes(li.dataset.status!) && (li.dataset.status !== 'queued' || li.dataset.stored === 'true'));
      },
      [count, statuses] as const,
      { timeout },
    );
  }
}

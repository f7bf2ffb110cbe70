/**
 * The demo chat page in a real headless Chromium (Debian's), two users on a real
 * courier and Redis: messages both ways; courier SIGKILLed and restarted while both
 * keep typing (each page shows every acked message of the other exactly once, in
 * order); a reload with unsent messages in the IndexedDB outbox, and one while a send
 * is in flight: they arrive exactly once.
 */

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { Browser } from 'playwright-core';
import { ChatPage, launchBrowser, servePage } from '../support/browser.js';
import { Courier } from '../support/fixture.js';

const courier = Courier.suite({ COURIER_POLL_INTERVAL_MS: 250 });
let browser: Browser;
let site: { url: string; stop: () => void };
const pages: ChatPage[] = [];

before(async () => {
  [browser, site] = await Promise.all([launchBrowser(), servePage()]);
});
after(async () => {
  await browser?.close();
  site?.stop();
  for (const page of pages) assert.deepEqual(page.errors, [], 'no script errors on the pages');
});

async function chatPages() {
  const { alice, bob, chat } = await courier.pair();
  const [a, b] = await Promise.all([
    ChatPage.open(browser, site.url, courier.env, alice.token, chat),
    ChatPage.open(browser, site.url, courier.env, bob.token, chat),
  ]);
  pages.push(a, b);
  await Promise.all([a.waitForState('open'), b.waitForState('open')]);
  return { a, b, alice, bob, chat };
}

test('messages both ways, acked on the sending page', async () => {
  const { a, b, alice, bob } = await chatPages();
  await a.type('hello bob');
  await b.waitForIncoming(1);
  await b.type('hi alice');
  await a.waitForIncoming(1);
  assert.deepEqual((await b.incoming()).map((m) => [m.sender, m.text]), [[alice.id, 'hello bob']]);
  assert.deepEqual((await a.incoming()).map((m) => [m.sender, m.text]), [[bob.id, 'hi alice']]);
  await a.waitForOutgoing(1, ['acked']);
  await b.waitForOutgoing(1, ['acked']);
  await a.page.screenshot({ path: 'build/alice.png' });
});

test('courier SIGKILLed and restarted while both keep typing: every message once, in order', async () => {
  const { a, b, alice, bob } = await chatPages();
  const count = 24;
  let restarted: Promise<void> | undefined;
  for (let i = 0; i < count; i++) {
    await a.type(`a${i}`);
    await b.type(`b${i}`);
    if (i === 8) {
      await courier.env.killCourier();
      restarted = (async () => {
        await a.waitForState('reconnecting');
        await courier.env.startCourier();
      })();
    }
  }
  await restarted;
  await Promise.all([a.waitForOutgoing(count, ['acked']), b.waitForOutgoing(count, ['acked'])]);
  await Promise.all([b.waitForIncoming(count), a.waitForIncoming(count)]);
  const onBob = await b.incoming();
  const onAlice = await a.incoming();
  assert.deepEqual(onBob.map((m) => m.text), Array.from({ length: count }, (_, i) => `a${i}`));
  assert.deepEqual(onAlice.map((m) => m.text), Array.from({ length: count }, (_, i) => `b${i}`));
  assert.ok(onBob.every((m) => m.sender === alice.id) && onAlice.every((m) => m.sender === bob.id));
  assert.equal(new Set(onBob.map((m) => m.id)).size, count, 'distinct ids');
  assert.equal(await courier.env.redis('XLEN', `inbox:{user:${bob.id}}`), count, 'nothing written twice');
});

test('alice reloads with unsent messages in her outbox: they arrive exactly once', async () => {
  const { a, b, bob } = await chatPages();
  await a.type('before the outage');
  await b.waitForIncoming(1);
  await courier.env.killCourier();
  await a.waitForState('reconnecting');
  for (const text of ['typed offline 1', 'typed offline 2', 'typed offline 3']) await a.type(text);
  await a.waitForOutgoing(4, ['acked', 'queued']); // queued ones saved in IndexedDB
  await a.page.screenshot({ path: 'build/alice-offline.png' });

  await a.page.reload();
  await a.page.waitForSelector('li.msg.out >> nth=3');
  assert.deepEqual((await a.outgoing()).map((m) => [m.text, m.status]), [
    ['before the outage', 'acked'],
    ['typed offline 1', 'queued'],
    ['typed offline 2', 'queued'],
    ['typed offline 3', 'queued'],
  ]);
  await courier.env.startCourier();
  await a.waitForOutgoing(4, ['acked']);
  await b.waitForIncoming(4);
  assert.deepEqual((await b.incoming()).map((m) => m.text), ['before the outage', 'typed offline 1', 'typed offline 2', 'typed offline 3']);
  assert.equal(await courier.env.redis('XLEN', `inbox:{user:${bob.id}}`), 4);
});

test('alice reloads while her send is in flight: it is resent with its time_key and arrives once', async () => {
  const { a, b, bob } = await chatPages();
  // Redis holds writes back: courier has the batch, no ack can come yet.
  await courier.env.redis('CLIENT', 'PAUSE', 4000, 'WRITE');
  await a.type('in flight during the reload');
  await a.waitForOutgoing(1, ['sent']);
  await a.page.reload();
  await a.waitForOutgoing(1, ['acked']);
  await b.waitForIncoming(1);
  assert.deepEqual((await b.incoming()).map((m) => m.text), ['in flight during the reload']);
  assert.equal(await courier.env.redis('XLEN', `inbox:{user:${bob.id}}`), 1);
});

test("two tabs of one user and device: the second waits for the first's outbox, then sends", async () => {
  const { a, b, alice, chat } = await chatPages();
  const device = 'shared-device';
  const first = await ChatPage.open(a.page.context(), site.url, courier.env, alice.token, chat, device);
  await first.waitForState('open');
  const second = await ChatPage.open(a.page.context(), site.url, courier.env, alice.token, chat, device);
  pages.push(first, second);
  await second.type('from the second tab');
  // The first tab holds the outbox lock: the second has not even connected.
  await first.type('from the first tab');
  await b.waitForIncoming(1);
  assert.equal(await second.page.getAttribute('#state', 'data-state'), 'connecting');
  await first.page.close();
  await second.waitForState('open');
  await b.waitForIncoming(2);
  assert.deepEqual((await b.incoming()).map((m) => m.text), ['from the first tab', 'from the second tab']);
});

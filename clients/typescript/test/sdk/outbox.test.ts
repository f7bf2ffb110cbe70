/**
 * The persistent outbox (here in memory, handed from one client to the next as a
 * reloaded page hands its IndexedDB over): messages sent offline, and batches sent but
 * not acked, are delivered exactly once by the next client; seen ids survive too, so a
 * redelivery after the "reload" does not reach the app again.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { memoryStorage, type Client, type Outgoing } from '../../src/index.js';
import { Courier } from '../support/fixture.js';
import { acked, framesOf, Inbox, newTap, opened, tapped, within } from '../support/util.js';


const courier = Courier.suite({ COURIER_POLL_INTERVAL_MS: 250 });

/** Resolves once every message of `client`'s outbox is stored. */
async function allStored(c: Client, count: number): Promise<void> {
  const stored = new Set<string>();
  await within(10_000, `${count} stored messages`, new Promise<void>((resolve) => {
    const check = (o?: Outgoing): void => {
      if (o?.stored) stored.add(o.key);
      for (const item of c.outbox()) if (item.stored) stored.add(item.key);
      if (stored.size >= count) resolve();
    };
    c.on('outbox', check);
    check();
  }));
}

test('messages sent while courier is down, then a "reload": delivered once by the next client', async () => {
  const { alice, bob, chat } = await courier.pair();
  const storage = memoryStorage();
  const b = courier.client(bob.token);
  const inbox = Inbox.of(b);
  await opened(b);
  await courier.env.killCourier();

  const before = courier.client(alice.token, { persist: storage });
  const sends = ['one', 'two', 'three'].map((t) => before.send(chat, t));
  await allStored(before, 3);
  await before.close();
  for (const send of sends) await assert.rejects(send, { code: 'closed' });

  await courier.env.startCourier();
  const after = courier.client(alice.token, { persist: storage });
  await after.ready;
  assert.deepEqual(after.outbox().map((o) => [o.text, o.status, o.stored]), [
    ['one', 'queued', true],
    ['two', 'queued', true],
    ['three', 'queued', true],
  ]);
  const acked: string[] = [];
  const allAcked = new Promise<void>((resolve) =>
    after.on('outbox', (o) => o.status === 'acked' && acked.push(o.text) === 3 && resolve()),
  );
  await inbox.count(3, 20_000);
  assert.deepEqual(inbox.texts(), ['one', 'two', 'three']);
  await within(10_000, 'every restored message to be acked', allAcked);
  assert.deepEqual(after.outbox(), []);
  assert.deepEqual((await storage.load()).map(([key]) => key), ['k'], 'only the last time_key is left');
});

test('a batch sent but not acked before the "reload" is resent with its time_key and written once', async () => {
  const { alice, bob, chat } = await courier.pair();
  const storage = memoryStorage();
  const tap = newTap();
  tap.passIn = (frame) => !frame.includes('"ack"');
  const first = courier.client(alice.token, { persist: storage, WebSocket: tapped(tap) });
  void first.send(chat, 'in flight').catch(() => undefined);
  await tap.until(() => framesOf(tap.received, 'ack').length === 1, "courier's ack (hidden from the client)");
  await first.close();

  const tap2 = newTap();
  const second = courier.client(alice.token, { persist: storage, WebSocket: tapped(tap2) });
  const b = courier.client(bob.token);
  const inbox = Inbox.of(b);
  await second.ready;
  await within(10_000, 'the resend to be acked', new Promise((resolve) => second.on('outbox', (o) => o.status === 'acked' && resolve(o))));
  const [original] = framesOf(tap.sent, 'messages');
  const [resent] = framesOf(tap2.sent, 'messages');
  assert.equal(resent!.time_key, original!.time_key);
  assert.deepEqual(resent!.messages, original!.messages);

  await acked(second.send(chat, 'next'));
  const [, next] = framesOf(tap2.sent, 'messages');
  assert.ok(next!.time_key > original!.time_key, 'time_keys keep increasing after the reload');
  await inbox.count(2);
  assert.deepEqual(inbox.texts(), ['in flight', 'next']);
});

test('seen ids survive a "reload": a redelivery of what the app already had is acked, not handed over', async () => {
  const { alice, bob, chat } = await courier.pair();
  const storage = memoryStorage();
  const tap = newTap();
  tap.rewriteOut = (frame) => (frame.includes('"ack"') ? undefined : frame);
  const first = courier.client(bob.token, { persist: storage, WebSocket: tapped(tap) });
  const inbox = Inbox.of(first);
  const a = courier.client(alice.token);
  await acked(a.send(chat, 'seen before the reload'));
  await inbox.count(1);
  await first.close();

  const tap2 = newTap();
  const second = courier.client(bob.token, { persist: storage, WebSocket: tapped(tap2) });
  const after = Inbox.of(second);
  // courier gives the new connection what the old one left unacked.
  await tap2.until(() => framesOf(tap2.received, 'messages').length === 1, 'the redelivery');
  const redelivery = framesOf(tap2.received, 'messages')[0]!;
  assert.equal(redelivery.messages![0]!.id, inbox.messages[0]!.id);
  await tap2.until(() => framesOf(tap2.sent, 'ack').some((f) => f.time_key === redelivery.time_key), 'its ack');
  assert.equal(after.calls, 0, 'not handed to the app again');
});

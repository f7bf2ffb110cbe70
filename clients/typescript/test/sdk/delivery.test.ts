/**
 * Sending and receiving through a real courier and Redis: batching, ack only after
 * the handler, redeliveries dropped by id, and reconnect + resend with the same
 * time_key after courier is SIGKILLed.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Courier } from '../support/fixture.js';
import { acked, framesOf, Inbox, newTap, next, opened, tapped, within } from '../support/util.js';


const courier = Courier.suite({ COURIER_ACK_TIMEOUT_MS: 1000, COURIER_POLL_INTERVAL_MS: 250 });

test('messages sent in one tick go in one batch; the recipient gets them in order', async () => {
  const { alice, bob, chat } = await courier.pair();
  const tap = newTap();
  const a = courier.client(alice.token, { WebSocket: tapped(tap) });
  const b = courier.client(bob.token);
  const inbox = Inbox.of(b);
  await Promise.all([opened(a), opened(b)]);

  await within(10_000, 'acks', Promise.all(['one', 'two', 'three'].map((t) => a.send(chat, t))));
  const batches = framesOf(tap.sent, 'messages');
  assert.equal(batches.length, 1, 'one batch frame');
  assert.deepEqual(
    batches[0]!.messages!.map((m) => [m.sender_id, m.chat_id, m.content_text]),
    [[alice.id, chat, 'one'], [alice.id, chat, 'two'], [alice.id, chat, 'three']],
  );
  await inbox.count(3);
  assert.deepEqual(inbox.texts(), ['one', 'two', 'three']);
  assert.ok(inbox.messages.every((m) => m.senderId === alice.id && m.chatId === chat && m.id > 0));
});

test('a delivery batch is acked only after the handler settles', async () => {
  const { alice, bob, chat } = await courier.pair();
  const tap = newTap();
  const a = courier.client(alice.token);
  const b = courier.client(bob.token, { WebSocket: tapped(tap) });
  let release!: () => void;
  const handled = new Promise<void>((resolve) => (release = resolve));
  let called!: () => void;
  const handlerCalled = new Promise<void>((resolve) => (called = resolve));
  b.onMessages(async () => {
    called();
    await handled;
  });
  await Promise.all([opened(a), opened(b)]);
  await acked(a.send(chat, 'hold on'));
  await within(10_000, 'the handler', handlerCalled);
  const delivery = framesOf(tap.received, 'messages')[0]!;
  // The handler is still running: no ack may have gone out. Give a wrongly eager
  // ack the time to appear: the send of a probe frame round-trips through courier.
  await acked(a.send(chat, 'probe'));
  assert.equal(framesOf(tap.sent, 'ack').length, 0, 'no ack while the handler runs');

  release();
  await tap.until(() => framesOf(tap.sent, 'ack').some((f) => f.time_key === delivery.time_key), 'the ack');
});

test('a handler that throws gets the batch again; the app sees each message once it succeeds', async () => {
  const { alice, bob, chat } = await courier.pair();
  const a = courier.client(alice.token);
  const b = courier.client(bob.token);
  let failures = 1;
  const given: string[] = [];
  const handled = new Inbox();
  b.onMessages((messages) => {
    given.push(...messages.map((m) => m.text));
    if (failures-- > 0) throw new Error('app not ready');
    handled.handler(messages);
  });
  const failed = next(b, 'error', (e) => e.code === 'handler_failed');
  await acked(a.send(chat, 'again'));
  assert.equal((await failed).code, 'handler_failed');
  await handled.count(1);
  assert.deepEqual(given, ['again', 'again'], 'handed over again after the failure (courier redelivered it)');
  assert.deepEqual(handled.texts(), ['again']);
});

test('the same ids delivered again are not handed to the app twice', async () => {
  const { alice, bob, chat } = await courier.pair();
  const tap = newTap();
  let dropAcks = true;
  tap.rewriteOut = (frame) => (dropAcks && frame.includes('"ack"') ? undefined : frame);
  const a = courier.client(alice.token);
  const b = courier.client(bob.token, { WebSocket: tapped(tap) });
  const inbox = Inbox.of(b);
  await acked(a.send(chat, 'once'));
  const [message] = await inbox.count(1);
  const deliveriesOf = (id: number) =>
    framesOf(tap.received, 'messages').filter((f) => f.messages!.some((m) => m.id === id));
  // Its ack never reached courier: after the ack timeout courier delivers it again.
  await tap.until(() => deliveriesOf(message!.id).length >= 2, 'a redelivery of the same id');
  dropAcks = false;
  const redelivery = deliveriesOf(message!.id).length;
  await tap.until(() => deliveriesOf(message!.id).length > redelivery, 'one more redelivery');
  const last = deliveriesOf(message!.id).at(-1)!;
  await tap.until(() => framesOf(tap.sent, 'ack').some((f) => f.time_key === last.time_key), 'the ack of the redelivery');
  assert.equal(inbox.calls, 1, 'the handler was called once');
  assert.deepEqual(inbox.texts(), ['once']);
});

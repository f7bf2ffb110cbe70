/**
 * Every error code of the contract (DESIGN §2), provoked for real against courier,
 * and what the SDK does with it: `not_a_member`, `sender_mismatch`, `invalid_frame`,
 * `deprecated_format` reject the send; `unavailable`, `rate_limited`, `internal` are
 * retried with the same time_key until acked; `invalid_json` and `unknown_time_key`
 * are reported as error events. Plus the local refusals and close code 1008.
 */

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CourierError, type Outgoing } from '../../src/index.js';
import { Courier, freeChat } from '../support/fixture.js';
import { acked, eventually, framesOf, Inbox, newTap, next, opened, tapped, within } from '../support/util.js';


/** The rejection of `promise`, which must reject. */
async function refusal(promise: Promise<unknown>): Promise<CourierError> {
  const outcome = await within(10_000, 'the refusal', promise.then(() => undefined, (e: unknown) => e));
  assert.ok(outcome instanceof CourierError, `a CourierError, got ${String(outcome)}`);
  return outcome;
}

// The safety poll stays above the Redis timeout: at or below it, a session whose inbox
// reads time out during an outage serves no client frame until Redis is back (the
// poll re-arms the read first), and a send gets no `unavailable` to retry on.
describe('with courier defaults (ack timeout 1 s, Redis timeout 300 ms)', () => {
  const courier = Courier.suite({ COURIER_ACK_TIMEOUT_MS: 1000, COURIER_REDIS_TIMEOUT_MS: 300, COURIER_POLL_INTERVAL_MS: 1000 });

  test('not_a_member rejects the send, and the message leaves the outbox', async () => {
    const { alice } = await courier.pair();
    const a = courier.client(alice.token);
    const events: Outgoing[] = [];
    a.on('outbox', (o) => events.push(o));
    const error = await refusal(a.send(freeChat(), 'nobody here'));
    assert.equal(error.code, 'not_a_member');
    assert.equal(typeof error.timeKey, 'number');
    assert.equal(error.retried, false);
    assert.deepEqual(a.outbox(), []);
    assert.equal(events.at(-1)!.status, 'failed');
    assert.equal(events.at(-1)!.error, error);
  });

  test('not_a_member in a batch that mixes chats rejects only the messages to that chat', async () => {
    const { alice, bob, chat } = await courier.pair();
    const tap = newTap();
    const a = courier.client(alice.token, { WebSocket: tapped(tap) });
    const b = courier.client(bob.token);
    const inbox = Inbox.of(b);
    await opened(a);
    const stranger = freeChat();
    const sends = [a.send(chat, 'to bob'), a.send(stranger, 'to nobody'), a.send(chat, 'to bob again')];
    const [first, refused, third] = await within(10_000, 'the sends', Promise.allSettled(sends));
    assert.equal(first!.status, 'fulfilled');
    assert.equal(third!.status, 'fulfilled');
    assert.equal(refused!.status, 'rejected');
    assert.equal(((refused as PromiseRejectedResult).reason as CourierError).code, 'not_a_member');
    const batches = framesOf(tap.sent, 'messages').map((f) => f.messages!.map((m) => m.chat_id));
    assert.deepEqual(batches, [[chat, stranger, chat], [chat], [stranger], [chat]], 'split by chat after the refusal');
    await inbox.count(2);
    assert.deepEqual(inbox.texts(), ['to bob', 'to bob again']);
  });

  test('sender_mismatch rejects the send', async () => {
    const { alice, bob, chat } = await courier.pair();
    const a = courier.client(alice.token, { userId: bob.id });
    assert.equal((await refusal(a.send(chat, 'as bob'))).code, 'sender_mismatch');
  });

  test('deprecated_format rejects the send (a frame altered on the way to carry a token)', async () => {
    const { alice, chat } = await courier.pair();
    const tap = newTap();
    tap.rewriteOut = (frame) => frame.replace('{"type":"messages"', '{"token":"old","type":"messages"');
    const a = courier.client(alice.token, { WebSocket: tapped(tap) });
    assert.equal((await refusal(a.send(chat, 'old style'))).code, 'deprecated_format');
  });

  test('invalid_json is an error event; the batch whose ack it spoiled comes back and is acked', async () => {
    const { alice, bob, chat } = await courier.pair();
    const tap = newTap();
    let spoil = true;
    tap.rewriteOut = (frame) => {
      if (!spoil || !frame.includes('"ack"')) return frame;
      spoil = false;
      return frame.slice(0, -1);
    };
    const a = courier.client(alice.token);
    const b = courier.client(bob.token, { WebSocket: tapped(tap) });
    const inbox = Inbox.of(b);
    const invalid = next(b, 'error', (e) => e.code === 'invalid_json');
    await acked(a.send(chat, 'spoilt ack'));
    const error = await invalid;
    assert.equal(error.timeKey, undefined);
    const deliveries = () => framesOf(tap.received, 'messages');
    await tap.until(() => deliveries().length >= 2, 'the redelivery after the ack timeout');
    await tap.until(
      () => framesOf(tap.sent, 'ack').some((f) => f.time_key === deliveries()[1]!.time_key),
      'the ack of the redelivery',
    );
    assert.deepEqual(inbox.texts(), ['spoilt ack']);
    assert.equal(inbox.calls, 1);
  });

  test('unknown_time_key is an error event, and nothing else happens', async () => {
    const { alice, chat } = await courier.pair();
    const tap = newTap();
    const a = courier.client(alice.token, { WebSocket: tapped(tap) });
    await opened(a);
    const unknown = next(a, 'error', (e) => e.code === 'unknown_time_key');
    tap.inject('{"type":"ack","time_key":12345}');
    assert.equal((await unknown).timeKey, 12345);
    assert.equal(a.state, 'open');
    await within(10_000, 'a send after it', a.send(chat, 'still fine'));
  });

  test('unavailable (Redis paused) is retried with the same time_key until courier acks', async () => {
    const { alice, bob, chat } = await courier.pair();
    const tap = newTap();
    const a = courier.client(alice.token, { WebSocket: tapped(tap), backoffBase: 100 });
    const b = courier.client(bob.token);
    const inbox = Inbox.of(b);
    await Promise.all([opened(a), opened(b)]);
    const unavailable = next(a, 'error', (e) => e.code === 'unavailable');
    await courier.env.redis('CLIENT', 'PAUSE', 3000, 'WRITE');
    const sent = a.send(chat, 'while redis sleeps');
    const error = await unavailable;
    assert.equal(error.retried, true);
    await within(15_000, 'the ack after Redis is back', sent);
    const batches = framesOf(tap.sent, 'messages');
    assert.ok(batches.length >= 2, 'sent again');
    assert.ok(batches.every((f) => f.time_key === error.timeKey), 'always with the same time_key');
    await inbox.count(1);
    assert.deepEqual(inbox.texts(), ['while redis sleeps']);
    assert.equal(await courier.env.redis('XLEN', `inbox:{user:${bob.id}}`), 1);
  });

  test('internal (an unexpected Redis answer) is retried until it succeeds', async () => {
    const { alice, bob, chat } = await courier.pair();
    await courier.env.redis('SET', `chat:${chat}`, 'not a list');
    const a = courier.client(alice.token, { backoffBase: 100 });
    const internal = next(a, 'error', (e) => e.code === 'internal');
    const sent = a.send(chat, 'after the repair');
    assert.equal((await internal).retried, true);
    // Repaired in one step (a retry must not find the chat missing: not_a_member).
    await courier.env.redis('RPUSH', `repair:${chat}`, alice.id, bob.id);
    await courier.env.redis('RENAME', `repair:${chat}`, `chat:${chat}`);
    await within(15_000, 'the ack after the repair', sent);
  });

  test('too many client errors: courier closes with 1008, the SDK reports it and reconnects', async () => {
    const { alice, chat } = await courier.pair();
    const tap = newTap();
    const a = courier.client(alice.token, { WebSocket: tapped(tap), backoffBase: 50 });
    await opened(a);
    const closed = next(a, 'error', (e) => e.code === 'connection_closed');
    const reconnecting = next(a, 'state', (s) => s.state === 'reconnecting');
    for (let i = 0; i < 40; i++) tap.inject('{}');
    assert.equal((await closed).closeCode, 1008);
    const state = await reconnecting;
    assert.equal(state.state === 'reconnecting' && state.closeCode, 1008);
    await opened(a);
    await within(10_000, 'a send after it', a.send(chat, 'back'));
  });

  test('texts over the limit and bad chat ids are refused locally, at once', async () => {
    const { alice, chat } = await courier.pair();
    const tap = newTap();
    const a = courier.client(alice.token, { WebSocket: tapped(tap) });
    assert.equal((await refusal(a.send(chat, 'é'.repeat(2049)))).code, 'text_too_long');
    assert.equal((await refusal(a.send(-1, 'x'))).code, 'invalid_chat_id');
    assert.equal((await refusal(a.send(1.5, 'x'))).code, 'invalid_chat_id');
    await within(10_000, 'a text at the limit', a.send(chat, 'é'.repeat(2048)));
    assert.equal(framesOf(tap.sent, 'messages').length, 1);
  });
});

describe('with tight limits (2 messages per batch, 5 frames/s)', () => {
  const courier = Courier.suite({
      COURIER_BATCH_MAX: 2,
      COURIER_RATE_LIMIT_FPS: 5,
      COURIER_RATE_LIMIT_BURST: 2,
      COURIER_MAX_CLIENT_ERRORS: 1000,
    });

  test('invalid_frame (more messages than courier allows) rejects every message of the batch', async () => {
    const { alice, chat } = await courier.pair();
    const a = courier.client(alice.token);
    await opened(a);
    const errors = await Promise.all(['1', '2', '3'].map((t) => refusal(a.send(chat, t))));
    assert.deepEqual(errors.map((e) => e.code), ['invalid_frame', 'invalid_frame', 'invalid_frame']);
    const ok = courier.client(alice.token, { batchMax: 2 });
    await within(10_000, 'sends within the limit', Promise.all(['1', '2', '3'].map((t) => ok.send(chat, t))));
  });

  test('rate_limited frames are retried with their time_key: every message arrives once', async () => {
    const { alice, bob, chat } = await courier.pair();
    const a = courier.client(alice.token, { batchMax: 1, backoffBase: 100 });
    const b = courier.client(bob.token);
    const inbox = Inbox.of(b);
    const limited = next(a, 'error', (e) => e.code === 'rate_limited');
    await Promise.all([opened(a), opened(b)]);
    const texts = Array.from({ length: 12 }, (_, i) => `m${i}`);
    const sends = texts.map((t) => a.send(chat, t));
    assert.equal((await limited).retried, true);
    await within(30_000, 'every send to be acked', Promise.all(sends));
    await inbox.count(texts.length, 30_000);
    assert.deepEqual([...inbox.texts()].sort(), [...texts].sort());
    assert.equal(await courier.env.redis('XLEN', `inbox:{user:${bob.id}}`), texts.length);
  });
});

describe('with one frame per second', () => {
  const courier = Courier.suite({ COURIER_RATE_LIMIT_FPS: 1, COURIER_RATE_LIMIT_BURST: 1, COURIER_MAX_CLIENT_ERRORS: 1000 });

  test('an ack courier refused with rate_limited is sent again', async () => {
    const { alice, bob, chat } = await courier.pair();
    const tap = newTap();
    const a = courier.client(alice.token);
    const b = courier.client(bob.token, { WebSocket: tapped(tap), backoffBase: 100 });
    const inbox = new Inbox();
    b.onMessages((messages) => {
      // Use up the connection's burst just before the SDK acks.
      for (let i = 0; i < 3; i++) tap.inject('{"type":"ack","time_key":1}');
      inbox.handler(messages);
    });
    await opened(b);
    const limited = next(b, 'error', (e) => e.code === 'rate_limited' && e.timeKey !== 1);
    await acked(a.send(chat, 'ack me twice'));
    const error = await limited;
    const delivery = framesOf(tap.received, 'messages')[0]!;
    assert.equal(error.timeKey, delivery.time_key, 'the ack was limited');
    await tap.until(() => framesOf(tap.sent, 'ack').filter((f) => f.time_key === delivery.time_key).length >= 2, 'the ack again');
    await eventually(
      async () => ((await courier.env.redis('XPENDING', `inbox:{user:${bob.id}}`, 'default')) as [number])[0] === 0,
      'nothing pending for bob',
    );
    assert.deepEqual(inbox.texts(), ['ack me twice']);
  });
});

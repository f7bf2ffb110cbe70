/**
 * courier SIGKILLed and restarted: clients reconnect with full-jitter backoff, resend
 * every unacked batch with its time_key (courier writes it once), and both sides see
 * every message exactly once, in order per sender.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { StateEvent } from '../../src/index.js';
import { Courier } from '../support/fixture.js';
import { acked, framesOf, Inbox, newTap, next, opened, tapped, within } from '../support/util.js';


const courier = Courier.suite({ COURIER_POLL_INTERVAL_MS: 250 });

test('a batch courier wrote but whose ack was lost is resent with its time_key and written once', async () => {
  const { alice, bob, chat } = await courier.pair();
  const tap = newTap();
  tap.passIn = (frame) => !frame.includes('"ack"');
  const a = courier.client(alice.token, { WebSocket: tapped(tap) });
  const b = courier.client(bob.token);
  const inbox = Inbox.of(b);
  await opened(a);

  let settled = false;
  const first = a.send(chat, 'first').then(() => (settled = true));
  await tap.until(() => framesOf(tap.received, 'ack').length === 1, 'courier to ack (the SDK does not see it)');
  await inbox.count(1);
  const reconnecting = next(a, 'state', (s) => s.state === 'reconnecting');
  await courier.env.killCourier();
  assert.equal((await reconnecting).state, 'reconnecting');
  assert.equal(settled, false);
  tap.passIn = undefined;
  await courier.env.startCourier();
  await within(15_000, 'the resent batch to be acked', first);

  const sent = framesOf(tap.sent, 'messages');
  assert.equal(sent.length, 2, 'sent twice');
  assert.equal(sent[0]!.time_key, sent[1]!.time_key, 'with the same time_key');
  assert.deepEqual(sent[0]!.messages, sent[1]!.messages, 'and the same content');
  assert.ok(sent[1]!.connection > sent[0]!.connection, 'on a later connection');
  await acked(a.send(chat, 'after'));
  await inbox.count(2);
  assert.deepEqual(inbox.texts(), ['first', 'after'], 'courier wrote the resent batch once');
  assert.equal(await courier.env.redis('XLEN', `inbox:{user:${bob.id}}`), 2);
});

test('both sides keep typing while courier is SIGKILLed and restarted: every message once, in order', async () => {
  const { alice, bob, chat } = await courier.pair();
  const a = courier.client(alice.token, { backoffBase: 50, backoffCap: 400 });
  const b = courier.client(bob.token, { backoffBase: 50, backoffCap: 400 });
  const states: StateEvent[] = [];
  a.on('state', (s) => states.push(s));
  const [aliceGot, bobGot] = [Inbox.of(a), Inbox.of(b)];
  await Promise.all([opened(a), opened(b)]);

  const count = 40;
  const sends: Promise<void>[] = [];
  for (let i = 0; i < count; i++) {
    sends.push(a.send(chat, `a${i}`), b.send(chat, `b${i}`));
    if (i === 15) {
      await courier.env.killCourier();
      // Typing goes on while courier is down, then it comes back.
      void (async () => {
        await new Promise((r) => setTimeout(r, 300));
        await courier.env.startCourier();
      })();
    }
    await new Promise((r) => setTimeout(r, 15));
  }
  await within(30_000, 'every send to be acked', Promise.all(sends));
  await bobGot.count(count);
  await aliceGot.count(count);
  assert.deepEqual(bobGot.texts(), Array.from({ length: count }, (_, i) => `a${i}`));
  assert.deepEqual(aliceGot.texts(), Array.from({ length: count }, (_, i) => `b${i}`));
  assert.equal(await courier.env.redis('XLEN', `inbox:{user:${bob.id}}`), count, 'nothing written twice');

  const retries = states.filter((s): s is Extract<StateEvent, { state: 'reconnecting' }> => s.state === 'reconnecting');
  assert.ok(retries.length >= 1, 'alice reconnected');
  retries.forEach((s, attempt) => {
    assert.ok(s.delay >= 0 && s.delay <= Math.min(400, 50 * 2 ** attempt), `delay ${s.delay} within the backoff of attempt ${attempt}`);
  });
  assert.equal(retries[0]!.closeCode, 1006, 'SIGKILL: no close frame');
});

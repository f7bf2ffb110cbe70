/**
 * Connecting: the token in a header (Node) or the query, renewal through the token
 * callback after HTTP 401 and after close code 4001, what a token that cannot be
 * renewed does, devices, and Node's own WebSocket (undici) besides `ws`.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import WebSocket from 'ws';
import { connect, type StateEvent, type WebSocketConstructor } from '../../src/index.js';
import { Courier } from '../support/fixture.js';
import { Inbox, newTap, next, opened, tapped, within } from '../support/util.js';

const nodeWebSocket = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;

const courier = Courier.suite();

/** A token callback that hands out `tokens` in turn (the last one again and again). */
function tokens(...list: (string | Promise<string>)[]) {
  const callback = async (): Promise<string> => {
    callback.calls++;
    return list[Math.min(callback.calls, list.length) - 1]!;
  };
  callback.calls = 0;
  return callback;
}

test('the token goes in a header in Node, or in the query when asked', async () => {
  const { alice, chat } = await courier.pair();
  for (const tokenIn of ['header', 'query'] as const) {
    const tap = newTap();
    const a = courier.client(alice.token, { tokenIn, WebSocket: tapped(tap), device: `d-${tokenIn}` });
    await within(10_000, `a send with the token in the ${tokenIn}`, a.send(chat, tokenIn));
    const url = new URL((tap.socket as unknown as { url: string }).url);
    assert.equal(url.searchParams.get('token'), tokenIn === 'query' ? alice.token : null);
    assert.equal(url.searchParams.get('device'), `d-${tokenIn}`);
  }
});

test('HTTP 401: the callback is asked for a new token, and the client connects', async () => {
  const { alice, chat } = await courier.pair();
  const callback = tokens('not-a-jwt', alice.token);
  const a = courier.client(callback, { backoffBase: 50, userId: alice.id });
  const refused = next(a, 'error', (e) => e.code === 'invalid_token');
  assert.equal((await refused).status, 401);
  await opened(a);
  assert.equal(callback.calls, 2);
  await within(10_000, 'a send', a.send(chat, 'renewed'));
});

test('close code 4001 (token expired): the callback renews it and the client reconnects', async () => {
  const { alice, bob, chat } = await courier.pair();
  const callback = tokens(courier.env.token(alice.id, 'alice', 2), courier.env.token(alice.id, 'alice', 3600));
  const a = courier.client(callback, { backoffBase: 50 });
  const b = courier.client(bob.token);
  const inbox = Inbox.of(b);
  await opened(a);
  const expired = await next(a, 'state', (s) => s.state === 'reconnecting', 10_000);
  assert.equal((expired as Extract<StateEvent, { state: 'reconnecting' }>).closeCode, 4001);
  await opened(a);
  assert.equal(callback.calls, 2);
  await within(10_000, 'a send on the renewed connection', a.send(chat, 'after 4001'));
  await inbox.count(1);
});

test('a fixed token that courier refuses (401) closes the client for good', async () => {
  const a = courier.client('not-a-jwt', { userId: 1 });
  const closed = await next(a, 'state', (s) => s.state === 'closed');
  assert.equal(closed.state === 'closed' && closed.error?.code, 'invalid_token');
  assert.equal(a.state, 'closed');
  await assert.rejects(a.send(1, 'x'), { code: 'closed' });
});

test('a fixed token that expires (4001) closes the client for good', async () => {
  const { alice } = await courier.pair();
  const a = courier.client(await courier.env.token(alice.id, 'alice', 2));
  await opened(a);
  const closed = await next(a, 'state', (s) => s.state === 'closed', 10_000);
  assert.equal(closed.state === 'closed' && closed.error?.closeCode, 4001);
});

test('a device id outside [A-Za-z0-9_-]{1,64}, or a URL that is not one, is refused at once', () => {
  assert.throws(() => courier.client('x', { device: 'a b' }), { code: 'invalid_device' });
  assert.throws(() => courier.client('x', { device: 'x'.repeat(65) }), { code: 'invalid_device' });
  assert.throws(() => connect('not a url', { token: 'x', WebSocket }), TypeError);
});

test('each device of a user gets every message once', async () => {
  const { alice, bob, chat } = await courier.pair();
  const a = courier.client(alice.token);
  const [onPhone, onLaptop] = ['phone', 'laptop'].map((device) => Inbox.of(courier.client(bob.token, { device }))) as [Inbox, Inbox];
  await within(10_000, 'the send', a.send(chat, 'to both'));
  await Promise.all([onPhone.count(1), onLaptop.count(1)]);
  assert.deepEqual([onPhone.texts(), onLaptop.texts()], [['to both'], ['to both']]);
});

test("Node's own WebSocket (undici): token header, and renewal after a refusal it cannot see", { skip: !nodeWebSocket && 'no global WebSocket (Node < 22 needs --experimental-websocket)' }, async () => {
  const { alice, bob, chat } = await courier.pair();
  const callback = tokens('not-a-jwt', alice.token);
  const a = courier.client(callback, { WebSocket: nodeWebSocket!, backoffBase: 50, userId: alice.id });
  const b = courier.client(bob.token, { WebSocket: nodeWebSocket! });
  const inbox = Inbox.of(b);
  await opened(a);
  assert.equal(callback.calls, 2, 'asked again: undici does not show the 401');
  await within(10_000, 'a send', a.send(chat, 'via undici'));
  await inbox.count(1);
});

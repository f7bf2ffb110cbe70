/**
 * The public types accept what users pass: the browser's WebSocket class, `ws`'s, and
 * token callbacks of either kind (checked by the compiler; the test only runs it).
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import WebSocket from 'ws';
import { CourierError, type ConnectOptions, type ErrorCode } from '../../src/index.js';

test('the WebSocket classes and token kinds users pass type-check', () => {
  const options: ConnectOptions[] = [
    { token: 'jwt', WebSocket: globalThis.WebSocket },
    { token: 'jwt', WebSocket },
    { token: () => 'jwt' },
    { token: async () => 'jwt', persist: true },
  ];
  assert.equal(options.length, 4);
});

test('a CourierError says whether the SDK retries after it', () => {
  const retried: ErrorCode[] = ['unavailable', 'rate_limited', 'internal'];
  const final: ErrorCode[] = ['not_a_member', 'sender_mismatch', 'invalid_frame', 'invalid_json', 'deprecated_format', 'unknown_time_key'];
  for (const code of retried) assert.equal(new CourierError(code, '').retried, true, code);
  for (const code of final) assert.equal(new CourierError(code, '').retried, false, code);
  const error = new CourierError('not_a_member', 'no', { timeKey: 7 });
  assert.ok(error instanceof Error);
  assert.equal(error.name, 'CourierError');
  assert.equal(error.timeKey, 7);
});

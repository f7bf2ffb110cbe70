/**
 * courier's client SDK for browsers and Node >= 20: see README.md.
 *
 * ```ts
 * const client = connect('wss://chat.example.com/ws', { token, device: 'web', persist: true });
 * client.onMessages((messages) => render(messages));
 * await client.send(10, 'hi');
 * ```
 */

export { Client, connect, type Sending } from './client.js';
export {
  CourierError,
  type ErrorCode,
  type LocalErrorCode,
  type RefusalCode,
  type ServerErrorCode,
} from './errors.js';
export { indexedDbStorage, memoryStorage, type Entry, type OutboxStorage } from './storage.js';
export type {
  ClientEvents,
  ConnectOptions,
  ConnectionState,
  Message,
  Outgoing,
  OutgoingStatus,
  StateEvent,
  WebSocketConstructor,
  WebSocketLike,
} from './types.js';

/** The public types of the SDK (no code). */

import type { CourierError } from './errors.js';
import type { OutboxStorage } from './storage.js';

/** A message delivered to this user. */
export interface Message {
  /** courier's global message id: the same for every recipient and every redelivery. */
  readonly id: number;
  readonly chatId: number;
  readonly senderId: number;
  readonly text: string;
}

/**
 * Where an outgoing message stands: `queued` (not yet written to a socket), `sent`
 * (written, no ack yet), `acked` (courier stored it for every recipient), `failed`
 * (refused for good: see `error`).
 */
export type OutgoingStatus = 'queued' | 'sent' | 'acked' | 'failed';

/** An outgoing message, as `outbox()` lists it and the `outbox` event reports it. */
export interface Outgoing {
  /** A local key, stable across reloads when the outbox is persistent. */
  readonly key: string;
  readonly chatId: number;
  readonly text: string;
  readonly status: OutgoingStatus;
  /** True once it is in the persistent outbox (a reload no longer loses it). */
  readonly stored: boolean;
  readonly error?: CourierError;
}

/** The connection's state, and why it changed. */
export type StateEvent =
  | { readonly state: 'connecting' }
  | { readonly state: 'open' }
  | {
      readonly state: 'reconnecting';
      /** Milliseconds until the next attempt (full-jitter exponential backoff). */
      readonly delay: number;
      /** The close code, when the connection had opened (1006: closed without one). */
      readonly closeCode?: number;
      /** The HTTP status of a refused upgrade, where the platform shows it (Node + `ws`). */
      readonly status?: number;
      /** A short human-readable reason. */
      readonly reason: string;
    }
  | { readonly state: 'closed'; readonly error?: CourierError };

export type ConnectionState = StateEvent['state'];

/** The events of a client and what their listeners get. */
export interface ClientEvents {
  state: StateEvent;
  error: CourierError;
  outbox: Outgoing;
}

/** The part of a WebSocket the SDK uses: the browser's, Node's (undici), or `ws`'s. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
}

/** A WebSocket class; the second argument is `{ headers }` when the token goes in a header. */
export type WebSocketConstructor = new (url: string, init?: any) => WebSocketLike;

export interface ConnectOptions {
  /**
   * The JWT, or a function returning a (fresh) one: called before the first
   * connection, after an HTTP 401, after close code 4001 (token expired) and, in
   * browsers (which cannot see the 401), after any connection that failed to open.
   */
  token: string | (() => string | Promise<string>);
  /** The device id, `[A-Za-z0-9_-]{1,64}` (default `default`): one per app instance. */
  device?: string;
  /** The sender id; default: the token's `id` claim. */
  userId?: number;
  /** The WebSocket class; default: `globalThis.WebSocket`. In Node, pass the `ws` package's. */
  WebSocket?: WebSocketConstructor;
  /** Where the token goes: the `token` header (default in Node) or `?token=` (default elsewhere: browsers cannot set headers). */
  tokenIn?: 'header' | 'query';
  /** Most messages per sent batch (default 100, courier's `COURIER_BATCH_MAX`). */
  batchMax?: number;
  /** Most UTF-8 bytes per text (default 4096, courier's `COURIER_MAX_TEXT_BYTES`). */
  maxTextBytes?: number;
  /** Largest frame built (default 1 MiB, courier's `COURIER_MAX_FRAME_BYTES`). */
  maxFrameBytes?: number;
  /** Most unacked sent batches at once (default 4). */
  window?: number;
  /** Backoff base in ms (default 250). */
  backoffBase?: number;
  /** Backoff cap in ms (default 30,000). */
  backoffCap?: number;
  /** A connection open this long resets the backoff (default 10,000 ms). */
  backoffReset?: number;
  /** A connection not open after this long is given up and retried (default 10,000 ms). */
  connectTimeout?: number;
  /** How many delivered message ids are remembered to drop redeliveries (default 10,000). */
  seenMax?: number;
  /**
   * A persistent outbox: `true` for IndexedDB (browsers), or any `OutboxStorage`.
   * Unacked messages, the last time_key and the seen ids survive a reload.
   */
  persist?: boolean | OutboxStorage;
}

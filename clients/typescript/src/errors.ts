/**
 * Typed errors: every error code of courier's contract (docs/DESIGN.md §2), the
 * refusals of the upgrade request, and the few the SDK raises itself.
 */

/** Error codes of courier's error frames (DESIGN §2). */
export type ServerErrorCode =
  | 'invalid_json'
  | 'invalid_frame'
  | 'deprecated_format'
  | 'sender_mismatch'
  | 'not_a_member'
  | 'unknown_time_key'
  | 'rate_limited'
  | 'unavailable'
  | 'internal';

/** The JSON `error` of a refused upgrade request (HTTP 400/401/403/429/503). */
export type RefusalCode =
  | 'invalid_token'
  | 'invalid_device'
  | 'not_websocket'
  | 'origin_not_allowed'
  | 'too_many_connections'
  | 'unavailable';

/**
 * Raised by the SDK itself:
 * - `text_too_long`, `invalid_chat_id`: a `send` refused locally, before any frame;
 * - `closed`: `close()` was called before the message was acked;
 * - `handler_failed`: the `onMessages` handler threw (the batch is not acked);
 * - `token_failed`: the token callback threw;
 * - `storage_failed`: the persistent outbox could not be written (sending goes on,
 *   without the guarantee across a reload);
 * - `connection_closed`: courier closed the connection with 1007, 1008 or 1009
 *   (`closeCode` says which); the SDK reconnects.
 */
export type LocalErrorCode =
  | 'text_too_long'
  | 'invalid_chat_id'
  | 'closed'
  | 'handler_failed'
  | 'token_failed'
  | 'storage_failed'
  | 'connection_closed';

export type ErrorCode = ServerErrorCode | RefusalCode | LocalErrorCode;

/** Codes after which a send batch is retried with the same `time_key`. */
const RETRIED: ReadonlySet<string> = new Set(['unavailable', 'rate_limited', 'internal']);

/** Codes after which a send batch can never succeed: its messages are rejected. */
const FATAL_FOR_BATCH: ReadonlySet<string> = new Set([
  'not_a_member',
  'sender_mismatch',
  'invalid_frame',
  'invalid_json',
  'deprecated_format',
]);

export class CourierError extends Error {
  override readonly name = 'CourierError';
  /** The `time_key` of the frame the error is about, when courier named one. */
  readonly timeKey: number | undefined;
  /** The WebSocket close code, for `connection_closed`. */
  readonly closeCode: number | undefined;
  /** The HTTP status of a refused upgrade, when the platform shows it (not browsers). */
  readonly status: number | undefined;

  constructor(
    readonly code: ErrorCode,
    message: string,
    details: { timeKey?: number; closeCode?: number; status?: number; cause?: unknown } = {},
  ) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.timeKey = details.timeKey;
    this.closeCode = details.closeCode;
    this.status = details.status;
  }

  /** True when the SDK retries by itself after this error (same batch, same `time_key`). */
  get retried(): boolean {
    return RETRIED.has(this.code);
  }
}

/** @internal */
export const isRetried = (code: string): boolean => RETRIED.has(code);
/** @internal */
export const isFatalForBatch = (code: string): boolean => FATAL_FOR_BATCH.has(code);

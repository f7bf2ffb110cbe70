/**
 * A courier connection that carries the at-least-once guarantee into the app as
 * exactly-once: it reconnects with full-jitter backoff, resends unacked batches with
 * their time_keys, acks a delivery batch only after the app's handler has it, drops
 * redeliveries by id, renews the token, and can keep its outbox across reloads.
 * The semantics are SDK-SPEC.md's; the wire protocol is docs/DESIGN.md's.
 */

import { CourierError, isFatalForBatch, isRetried } from './errors.js';
import { Inbox, type Handler } from './inbox.js';
import { Outbox, frameBytes, snapshot, type Batch, type Item, type Persist } from './outbox.js';
import { indexedDbStorage, type OutboxStorage } from './storage.js';
import type {
  ClientEvents,
  ConnectOptions,
  ConnectionState,
  Message,
  Outgoing,
  StateEvent,
  WebSocketConstructor,
  WebSocketLike,
} from './types.js';
import { backoff, localKey, tokenUserId, utf8Length } from './util.js';

/** What `send` returns: settles with the ack (or a refusal); `key` names the message in
 * `outbox()` and the `outbox` event. */
export interface Sending extends Promise<void> {
  readonly key: string;
}

const DEVICE = /^[A-Za-z0-9_-]{1,64}$/;
const OPEN = 1;
/** HTTP statuses of a refused upgrade and the JSON `error` courier sends with each. */
const REFUSALS: Record<number, CourierError['code']> = {
  400: 'invalid_device',
  401: 'invalid_token',
  403: 'origin_not_allowed',
  429: 'too_many_connections',
  503: 'unavailable',
};
/** Close codes that are reported as an error event (then the SDK reconnects). */
const REPORTED_CLOSES = [1007, 1008, 1009];

/** Opens a client; it connects at once and stays connected until `close()`. */
export function connect(url: string, options: ConnectOptions): Client {
  return new Client(url, options);
}

export class Client {
  /** Settles once the persistent outbox is loaded (at once without one). */
  readonly ready: Promise<void>;
  readonly #url: string;
  readonly #options: ConnectOptions;
  readonly #device: string;
  readonly #WebSocket: WebSocketConstructor;
  readonly #outbox: Outbox;
  readonly #inbox: Inbox;
  readonly #listeners = new Map<keyof ClientEvents, Set<(value: never) => void>>();
  readonly #timers = new Set<ReturnType<typeof setTimeout>>();
  #resolveReady!: () => void;
  /** Settles when the client closes: releases the outbox's lock. */
  readonly #released: Promise<void>;
  #release!: () => void;
  #store: OutboxStorage | undefined;
  #loaded = false;
  #state: StateEvent = { state: 'connecting' };
  #ws: WebSocketLike | undefined;
  /** Connection generation: acks and resends belong to one connection. */
  #gen = 0;
  #attempt = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #token: string | undefined;
  #needToken = true;
  #userId: number | undefined;
  /** Acks sent on this connection (time_key → retries), to resend one courier refused. */
  readonly #acks = new Map<number, number>();
  #closed = false;
  #writes: Promise<void> = Promise.resolve();
  #pumping = false;
  #scheduled = false;

  constructor(url: string, options: ConnectOptions) {
    // Absolute (a relative one is resolved against the page); a bad URL throws here.
    this.#url = new URL(url, (globalThis as { location?: { href: string } }).location?.href).href;
    this.#options = options;
    this.#device = options.device ?? 'default';
    if (!DEVICE.test(this.#device)) {
      throw new CourierError('invalid_device', `device must match [A-Za-z0-9_-]{1,64}: ${this.#device}`);
    }
    const WebSocket = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WebSocket) {
      throw new TypeError(
        'no WebSocket class: pass { WebSocket } (e.g. from the ws package), or run Node 20 with --experimental-websocket',
      );
    }
    this.#WebSocket = WebSocket;
    const persist: Persist | undefined = options.persist ? (put, del) => this.#persist(put, del) : undefined;
    this.#outbox = new Outbox(
      { batchMax: options.batchMax ?? 100, maxFrameBytes: options.maxFrameBytes ?? 1 << 20 },
      persist,
      (item) => this.#emit('outbox', snapshot(item)),
    );
    this.#inbox = new Inbox(
      options.seenMax ?? 10_000,
      persist,
      (timeKey, gen) => this.#sendAck(timeKey, gen),
      (error) => this.#emit('error', error),
    );
    this.ready = new Promise((resolve) => (this.#resolveReady = resolve));
    this.#released = new Promise((resolve) => (this.#release = resolve));
    // After the caller had a chance to add listeners.
    queueMicrotask(() => void this.#open());
  }

  /** The connection's state now. */
  get state(): ConnectionState {
    return this.#state.state;
  }

  /** The sender id (the token's `id` claim), once known. */
  get userId(): number | undefined {
    return this.#userId;
  }

  /**
   * Sends `text` to chat `chatId`. Resolves when courier acked the batch that carries
   * it; rejects with a `CourierError` when it is refused for good (`not_a_member`,
   * ..., or locally `text_too_long`). Waits, and retries, through disconnections and
   * `unavailable`/`rate_limited`/`internal`.
   */
  send(chatId: number, text: string): Sending {
    let settle!: (error?: CourierError) => void;
    const promise = new Promise<void>((resolve, reject) => {
      settle = (error) => (error ? reject(error) : resolve());
    });
    const key = localKey();
    const limit = this.#options.maxTextBytes ?? 4096;
    if (this.#closed) settle(new CourierError('closed', 'the client is closed'));
    else if (!Number.isSafeInteger(chatId) || chatId < 0) {
      settle(new CourierError('invalid_chat_id', `chat id must be a non-negative integer: ${chatId}`));
    } else if (utf8Length(text) > limit) {
      settle(new CourierError('text_too_long', `text is over ${limit} UTF-8 bytes`));
    } else {
      const item: Item = {
        key,
        chatId,
        text,
        status: 'queued',
        stored: false,
        seq: 0,
        bytes: frameBytes(0, chatId, text),
        settle,
      };
      this.#outbox.add(item);
      this.#emit('outbox', snapshot(item));
      // Messages sent in the same tick go in one batch.
      if (!this.#scheduled) {
        this.#scheduled = true;
        queueMicrotask(() => {
          this.#scheduled = false;
          void this.#pump();
        });
      }
    }
    return Object.assign(promise, { key });
  }

  /**
   * Sets the handler of delivered messages (one at a time, in order). A batch is acked
   * once the handler settles successfully; if it throws or rejects, the batch is not
   * acked and comes back (an `error` event says so). Until a handler is set,
   * deliveries wait. Returns a function that removes the handler.
   */
  onMessages(handler: (messages: Message[]) => void | Promise<void>): () => void {
    this.#inbox.handler = handler as Handler;
    void this.#inbox.drain();
    return () => {
      if (this.#inbox.handler === handler) this.#inbox.handler = undefined;
    };
  }

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof ClientEvents>(event: K, listener: (value: ClientEvents[K]) => void): () => void {
    const set = this.#listeners.get(event) ?? new Set();
    this.#listeners.set(event, set.add(listener));
    return () => set.delete(listener);
  }

  /** Every unacked outgoing message, in sending order (restored ones included). */
  outbox(): Outgoing[] {
    return this.#outbox.all().map(snapshot);
  }

  /**
   * Closes for good: no reconnect; unsettled `send` promises reject with `closed`
   * (a persistent outbox keeps their messages for the next client). Resolves once
   * the outbox's writes are done.
   */
  async close(): Promise<void> {
    this.#finish();
    await this.#writes;
  }

  async #open(): Promise<void> {
    this.#timer = undefined;
    this.#setState({ state: 'connecting' });
    let token: string;
    try {
      token = await this.#currentToken();
    } catch (cause) {
      this.#emit('error', new CourierError('token_failed', 'the token callback failed', { cause }));
      return this.#retry({ reason: 'token callback failed' });
    }
    if (this.#closed) return;
    const userId = this.#options.userId ?? tokenUserId(token);
    if (userId === undefined) {
      return this.#finish(new CourierError('invalid_token', 'the token has no integer `id` claim: pass userId'));
    }
    this.#userId = userId;
    if (!this.#loaded) await this.#load(userId);
    if (this.#closed) return;

    const url = new URL(this.#url);
    url.protocol = url.protocol.replace('http', 'ws');
    url.searchParams.set('device', this.#device);
    // Only Node (and runtimes that pass for it) can set headers on a WebSocket; browsers,
    // their workers included, cannot.
    const node = (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node;
    const header = (this.#options.tokenIn ?? (node ? 'header' : 'query')) === 'header';
    if (!header) url.searchParams.set('token', token);
    let ws: WebSocketLike;
    try {
      ws = header ? new this.#WebSocket(url.href, { headers: { token } }) : new this.#WebSocket(url.href);
    } catch (cause) {
      return this.#finish(new CourierError('connection_closed', `cannot open ${url.origin}`, { cause }));
    }
    const gen = ++this.#gen;
    let opened = false;
    let status: number | undefined;
    this.#ws = ws;
    const ended = (closeCode?: number): void => {
      if (this.#ws !== ws) return;
      this.#ws = undefined;
      clearTimeout(this.#timer);
      this.#ended(opened, status, closeCode);
    };
    this.#timer = setTimeout(() => {
      ended();
      ws.close();
    }, this.#options.connectTimeout ?? 10_000);
    ws.onopen = () => {
      if (this.#ws !== ws) return;
      opened = true;
      clearTimeout(this.#timer);
      this.#timer = setTimeout(() => (this.#attempt = 0), this.#options.backoffReset ?? 10_000);
      this.#setState({ state: 'open' });
      // Every unacked batch again, in order, with its time_key, before any new one.
      for (const batch of this.#outbox.batches) {
        this.#clearTimer(batch.timer);
        batch.timer = undefined;
        this.#transmit(batch);
      }
      void this.#pump();
    };
    ws.onmessage = (event: { data: unknown }) => {
      if (this.#ws === ws) this.#frame(String(event.data), gen);
    };
    ws.onerror = (event: { message?: string; error?: { message?: string } }) => {
      // `ws` says "Unexpected server response: 401"; browsers and undici say nothing.
      const match = /response: (\d{3})/.exec(`${event?.message} ${event?.error?.message}`);
      status ??= match ? +match[1]! : undefined;
      // undici gives no close event after a refused upgrade.
      if (!opened) ended();
    };
    ws.onclose = (event: { code: number }) => ended(event.code);
  }

  /**
   * Reads the persistent outbox (if any) once, before the first connection. An
   * IndexedDB outbox belongs to one client at a time: where the Web Locks API exists,
   * a second tab of the same user and device waits here until the first one closes
   * (two clients sharing one outbox would each send its queued messages).
   */
  async #load(userId: number): Promise<void> {
    const persist = this.#options.persist;
    if (persist === true) {
      const name = `courier:${new URL(this.#url).host}:${userId}:${this.#device}`;
      const locks = (globalThis as { navigator?: { locks?: LockManager } }).navigator?.locks;
      if (locks) {
        await new Promise<void>((granted) => void locks.request(name, () => (granted(), this.#released)));
        if (this.#closed) return;
      }
      this.#store = indexedDbStorage(name);
    } else this.#store = persist || undefined;
    let entries: [string, unknown][] = [];
    try {
      entries = this.#store ? await this.#store.load() : [];
    } catch (cause) {
      this.#emit('error', new CourierError('storage_failed', 'cannot read the persistent outbox', { cause }));
    }
    this.#outbox.restore(entries);
    this.#inbox.restore(entries);
    this.#loaded = true;
    this.#resolveReady();
  }

  async #currentToken(): Promise<string> {
    const { token } = this.#options;
    if (typeof token === 'string') return token;
    if (this.#needToken || this.#token === undefined) {
      this.#token = await token();
      this.#needToken = false;
    }
    return this.#token;
  }

  /** A connection ended (or never opened): reconnect, or close for good. */
  #ended(opened: boolean, status: number | undefined, closeCode: number | undefined): void {
    this.#acks.clear();
    if (this.#closed) return;
    const renewable = typeof this.#options.token === 'function';
    let fatal: CourierError | undefined;
    if (!opened) {
      // A browser cannot see why an upgrade failed: it may be a 401, so renew the token.
      if (status === undefined || status === 401) this.#needToken = true;
      const code = status === undefined ? undefined : REFUSALS[status];
      if (code && status !== undefined) {
        const error = new CourierError(code, `courier refused the connection (HTTP ${status})`, { status });
        if (status === 400 || status === 403 || (status === 401 && !renewable)) fatal = error;
        else this.#emit('error', error);
      }
    } else if (closeCode === 4001) {
      this.#needToken = true;
      if (!renewable) fatal = new CourierError('invalid_token', 'the token expired (4001) and no token callback can renew it', { closeCode });
    } else if (closeCode !== undefined && REPORTED_CLOSES.includes(closeCode)) {
      this.#emit('error', new CourierError('connection_closed', `courier closed the connection with ${closeCode}`, { closeCode }));
    }
    if (fatal) return this.#finish(fatal);
    const reason = opened ? `closed ${closeCode ?? 1006}` : status ? `refused ${status}` : 'could not connect';
    this.#retry(opened ? { closeCode: closeCode ?? 1006, reason } : status ? { status, reason } : { reason });
  }

  #retry(why: { closeCode?: number; status?: number; reason: string }): void {
    const delay = this.#backoff(this.#attempt++);
    this.#setState({ state: 'reconnecting', delay, ...why });
    this.#timer = setTimeout(() => void this.#open(), delay);
  }

  #frame(text: string, gen: number): void {
    let frame: { type?: string; time_key?: number; code?: string; message?: string; messages?: WireMessage[] };
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    const timeKey = frame.time_key;
    if (frame.type === 'ack' && timeKey !== undefined) {
      this.#attempt = 0;
      const batch = this.#outbox.find(timeKey);
      if (batch) {
        this.#outbox.acked(batch);
        void this.#pump();
      }
    } else if (frame.type === 'messages' && timeKey !== undefined && Array.isArray(frame.messages)) {
      this.#attempt = 0;
      this.#inbox.push(timeKey, frame.messages.map(toMessage), gen);
    } else if (frame.type === 'error') {
      this.#serverError(
        new CourierError((frame.code ?? 'internal') as CourierError['code'], frame.message ?? '', timeKey === undefined ? {} : { timeKey }),
      );
    }
  }

  /** An error frame: about one of our batches, one of our acks, or neither. */
  #serverError(error: CourierError): void {
    this.#emit('error', error);
    const { code, timeKey } = error;
    if (timeKey === undefined) return;
    const batch = this.#outbox.find(timeKey);
    if (batch && isRetried(code)) {
      batch.gen = 0;
      this.#clearTimer(batch.timer);
      batch.timer = this.#later(() => {
        batch.timer = undefined;
        this.#transmit(batch);
      }, this.#backoff(batch.tries++));
    } else if (batch && isFatalForBatch(code)) {
      this.#outbox.refused(batch, error);
      void this.#pump();
    } else if (!batch && isRetried(code) && this.#acks.has(timeKey)) {
      const tries = this.#acks.get(timeKey)! + 1;
      this.#acks.set(timeKey, tries);
      const gen = this.#gen;
      this.#later(() => this.#sendAck(timeKey, gen), this.#backoff(tries));
    }
  }

  /** Forms and sends batches while the connection is open and the window has room. */
  async #pump(): Promise<void> {
    if (this.#pumping || !this.#loaded) return;
    this.#pumping = true;
    try {
      while (this.#ws?.readyState === OPEN && this.#outbox.batches.length < (this.#options.window ?? 4)) {
        const formed = this.#outbox.form(this.#userId!);
        if (!formed) break;
        await formed.ready;
        this.#transmit(formed.batch);
      }
    } finally {
      this.#pumping = false;
    }
  }

  /** Writes a batch to the open connection, unless it is already there or waits for a retry. */
  #transmit(batch: Batch): void {
    const ws = this.#ws;
    if (!ws || ws.readyState !== OPEN || !batch.ready || batch.timer || batch.gen === this.#gen) return;
    ws.send(batch.frame);
    batch.gen = this.#gen;
    for (const item of batch.items) {
      if (item.status !== 'queued') continue;
      item.status = 'sent';
      this.#emit('outbox', snapshot(item));
    }
  }

  #sendAck(timeKey: number, gen: number): void {
    const ws = this.#ws;
    if (gen !== this.#gen || !ws || ws.readyState !== OPEN) return;
    ws.send(`{"type":"ack","time_key":${timeKey}}`);
    if (!this.#acks.has(timeKey)) this.#acks.set(timeKey, 0);
    if (this.#acks.size > 256) this.#acks.delete(this.#acks.keys().next().value!);
  }

  #persist(put: [string, unknown][], del: string[]): Promise<void> {
    const write = this.#store
      ? this.#store.write(put, del).catch((cause: unknown) => {
          this.#emit('error', new CourierError('storage_failed', 'cannot write the persistent outbox', { cause }));
        })
      : Promise.resolve();
    return (this.#writes = write);
  }

  /** Closed for good, by `close()` or a refusal no retry can cure. */
  #finish(error?: CourierError): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#timer);
    for (const timer of this.#timers) clearTimeout(timer);
    const ws = this.#ws;
    this.#ws = undefined;
    if (ws && ws.readyState <= OPEN) ws.close(1000);
    this.#outbox.abandon(error ?? new CourierError('closed', 'the client was closed before courier acked'));
    this.#setState(error ? { state: 'closed', error } : { state: 'closed' });
    if (error) this.#emit('error', error);
    this.#resolveReady();
    this.#release();
  }

  #backoff(attempt: number): number {
    return backoff(attempt, this.#options.backoffBase ?? 250, this.#options.backoffCap ?? 30_000);
  }

  #later(run: () => void, ms: number): ReturnType<typeof setTimeout> {
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      run();
    }, ms);
    this.#timers.add(timer);
    return timer;
  }

  #clearTimer(timer: ReturnType<typeof setTimeout> | undefined): void {
    if (timer === undefined) return;
    clearTimeout(timer);
    this.#timers.delete(timer);
  }

  #setState(state: StateEvent): void {
    this.#state = state;
    this.#emit('state', state);
  }

  #emit<K extends keyof ClientEvents>(event: K, value: ClientEvents[K]): void {
    for (const listener of [...(this.#listeners.get(event) ?? [])]) {
      try {
        (listener as (value: ClientEvents[K]) => void)(value);
      } catch (error) {
        // A listener's bug must not break the client's state: report it apart.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
}

interface WireMessage {
  id: number;
  sender_id: number;
  chat_id: number;
  content_text: string;
}

const toMessage = (m: WireMessage): Message => ({
  id: m.id,
  chatId: m.chat_id,
  senderId: m.sender_id,
  text: m.content_text,
});

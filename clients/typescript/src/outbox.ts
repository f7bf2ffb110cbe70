/**
 * The send side's state: messages not yet in a batch (`pending`), and unacked batches
 * in the order they were formed (`batches`), each with the `time_key` and the frame it
 * keeps for every resend. With a store, every change is written through it: a message
 * when it is queued, its batch (with the last time_key) before the batch is first
 * sent, the batch's removal when it is acked or refused.
 *
 * Store records: `m<seq>` a pending message, `b<time_key>` a batch, `k` the last
 * time_key. (`s…` records belong to the seen ids, see inbox.ts.)
 */

import type { CourierError } from './errors.js';
import type { Entry } from './storage.js';
import type { Outgoing, OutgoingStatus } from './types.js';
import { utf8Length } from './util.js';

/** An outgoing message and what the SDK keeps about it. */
export interface Item {
  readonly key: string;
  readonly chatId: number;
  readonly text: string;
  status: OutgoingStatus;
  stored: boolean;
  error?: CourierError;
  /** Order in the store; 0 until the store is loaded. */
  seq: number;
  /** Its size inside a batch frame, in UTF-8 bytes. */
  readonly bytes: number;
  /** Re-queued after a mixed batch got `not_a_member`: batched only with its own chat. */
  alone?: boolean;
  /** Settles the promise `send` returned (absent for messages restored from the store). */
  settle?: (error?: CourierError) => void;
}

/** A formed batch: sent as `frame` every time, until acked or refused. */
export interface Batch {
  readonly timeKey: number;
  readonly items: Item[];
  readonly frame: string;
  /** Written to the store (or no store): it may go out. */
  ready: boolean;
  /** The connection it was last written to (0: none since the last error). */
  gen: number;
  /** Retries after `unavailable`, `rate_limited` or `internal`. */
  tries: number;
  timer?: ReturnType<typeof setTimeout> | undefined;
}

/** Writes to the store, or does nothing without one. */
export type Persist = (put: Entry[], del: string[]) => Promise<void>;

interface StoredMessage {
  key: string;
  chatId: number;
  text: string;
  alone?: boolean;
}

interface StoredBatch {
  timeKey: number;
  senderId: number;
  items: (StoredMessage & { seq: number })[];
}

/** Bytes of a batch frame around its messages (type, time_key, brackets). */
const FRAME_OVERHEAD = 64;

export class Outbox {
  readonly pending: Item[] = [];
  readonly batches: Batch[] = [];
  #lastKey = 0;
  #seq = 0;
  #loaded = false;

  constructor(
    private readonly limits: { batchMax: number; maxFrameBytes: number },
    private readonly persist: Persist | undefined,
    private readonly changed: (item: Item) => void,
  ) {}

  /** Takes in what the store holds (batches first, then pending messages), then numbers
   * and stores the messages queued meanwhile. */
  restore(entries: Entry[]): void {
    const early = this.pending.splice(0);
    const messages: Item[] = [];
    for (const [key, value] of entries) {
      if (key === 'k') this.#lastKey = Math.max(this.#lastKey, value as number);
      else if (key[0] === 'b') {
        const stored = value as StoredBatch;
        const items = stored.items.map((m) => this.#restored(m, m.seq));
        this.batches.push(batchOf(stored.timeKey, stored.senderId, items, true));
        this.#lastKey = Math.max(this.#lastKey, stored.timeKey);
      } else if (key[0] === 'm') messages.push(this.#restored(value as StoredMessage, +key.slice(1)));
    }
    this.batches.sort((a, b) => a.timeKey - b.timeKey);
    messages.sort((a, b) => a.seq - b.seq);
    this.pending.push(...messages);
    this.#loaded = true;
    for (const item of [...this.batches.flatMap((b) => b.items), ...messages]) this.changed(item);
    for (const item of early) this.add(item);
  }

  /** Queues a message (and stores it, once the store is loaded). */
  add(item: Item): void {
    this.pending.push(item);
    if (!this.#loaded) return;
    item.seq = ++this.#seq;
    const { persist } = this;
    if (persist) {
      void persist([[`m${item.seq}`, stored(item)]], []).then(() => this.#mark(item));
    }
  }

  /**
   * Forms the next batch from the head of the queue: up to `batchMax` messages and
   * `maxFrameBytes`; messages re-queued `alone` go only with messages of their chat.
   * The batch gets the next time_key; `ready` resolves once it is stored.
   */
  form(senderId: number): { batch: Batch; ready: Promise<void> } | undefined {
    const first = this.pending[0];
    if (!first) return undefined;
    let bytes = FRAME_OVERHEAD;
    let count = 0;
    for (const item of this.pending) {
      if (count === this.limits.batchMax) break;
      if (!!item.alone !== !!first.alone || (first.alone && item.chatId !== first.chatId)) break;
      if (count > 0 && bytes + item.bytes > this.limits.maxFrameBytes) break;
      bytes += item.bytes + 1;
      count++;
    }
    const items = this.pending.splice(0, count);
    // Strictly increasing, below 2^53: microseconds, the sub-millisecond digits random
    // (two devices of one user share the dedup namespace of courier).
    const now = Date.now() * 1000 + Math.floor(Math.random() * 1000);
    const timeKey = (this.#lastKey = Math.max(now, this.#lastKey + 1));
    const batch = batchOf(timeKey, senderId, items, !this.persist);
    this.batches.push(batch);
    const record: StoredBatch = {
      timeKey,
      senderId,
      items: items.map((item) => ({ ...stored(item), seq: item.seq })),
    };
    const ready = this.persist
      ? this.persist([[`b${timeKey}`, record], ['k', timeKey]], items.map((i) => `m${i.seq}`)).then(
          () => {
            batch.ready = true;
            for (const item of items) this.#mark(item);
          },
        )
      : Promise.resolve();
    return { batch, ready };
  }

  /** The unacked batch named `timeKey`, if any. */
  find(timeKey: number): Batch | undefined {
    return this.batches.find((b) => b.timeKey === timeKey);
  }

  /** courier acked the batch: its messages are delivered. */
  acked(batch: Batch): void {
    this.#drop(batch, []);
    for (const item of batch.items) this.#settle(item, 'acked');
  }

  /**
   * courier refused the batch for good. A `not_a_member` batch that mixes chats
   * cannot say which chat failed (nothing of it was written): its messages go back to
   * the head of the queue, each to be sent again in a batch of its chat only. Any
   * other refusal fails every message of the batch.
   */
  refused(batch: Batch, error: CourierError): void {
    const chats = new Set(batch.items.map((i) => i.chatId));
    if (error.code === 'not_a_member' && chats.size > 1) {
      for (const item of batch.items) {
        item.alone = true;
        item.status = 'queued';
        this.changed(item);
      }
      this.pending.unshift(...batch.items);
      this.#drop(
        batch,
        batch.items.map((i): Entry => [`m${i.seq}`, stored(i)]),
      );
      return;
    }
    this.#drop(batch, []);
    for (const item of batch.items) this.#settle(item, 'failed', error);
  }

  /** Every unacked message, in sending order. */
  all(): Item[] {
    return [...this.batches.flatMap((b) => b.items), ...this.pending];
  }

  /** The client is closing: every promise rejects; stored messages stay stored. */
  abandon(error: CourierError): void {
    for (const batch of this.batches) clearTimeout(batch.timer);
    for (const item of this.all()) item.settle?.(error);
  }

  #drop(batch: Batch, put: Entry[]): void {
    clearTimeout(batch.timer);
    this.batches.splice(this.batches.indexOf(batch), 1);
    void this.persist?.(put, [`b${batch.timeKey}`]);
  }

  #settle(item: Item, status: OutgoingStatus, error?: CourierError): void {
    item.status = status;
    if (error) item.error = error;
    item.settle?.(error);
    this.changed(item);
  }

  #restored(message: StoredMessage, seq: number): Item {
    this.#seq = Math.max(this.#seq, seq);
    return {
      ...message,
      seq,
      status: 'queued',
      stored: true,
      bytes: frameBytes(0, message.chatId, message.text),
    };
  }

  #mark(item: Item): void {
    if (item.stored || item.status === 'acked' || item.status === 'failed') return;
    item.stored = true;
    this.changed(item);
  }
}

/** The size of one message inside a batch frame (the sender id counted at its widest). */
export function frameBytes(senderId: number, chatId: number, text: string): number {
  return utf8Length(JSON.stringify(wire(senderId, chatId, text))) + 16;
}

/** The public view of an item. */
export function snapshot(item: Item): Outgoing {
  const { key, chatId, text, status, stored, error } = item;
  return error ? { key, chatId, text, status, stored, error } : { key, chatId, text, status, stored };
}

function wire(senderId: number, chatId: number, text: string) {
  return { sender_id: senderId, chat_id: chatId, content_text: text };
}

function stored(item: Item): StoredMessage {
  const { key, chatId, text, alone } = item;
  return alone ? { key, chatId, text, alone } : { key, chatId, text };
}

function batchOf(timeKey: number, senderId: number, items: Item[], ready: boolean): Batch {
  const messages = items.map((i) => wire(senderId, i.chatId, i.text));
  const frame = JSON.stringify({ type: 'messages', time_key: timeKey, messages });
  return { timeKey, items, frame, ready, gen: 0, tries: 0 };
}

/**
 * The receive side: delivery batches are handed to the app's handler one at a time,
 * in the order they arrived, without the messages the app has already seen (by id);
 * a batch is acked only after the handler settled successfully and the seen ids are
 * stored (when the outbox is persistent), so a redelivery after a reload is still
 * dropped.
 *
 * Store records: `s<n>`, the ids of the n-th handled batch; the oldest are deleted
 * once the newer ones hold `seenMax` ids.
 */

import { CourierError } from './errors.js';
import type { Persist } from './outbox.js';
import type { Entry } from './storage.js';
import type { Message } from './types.js';

/** What the app gives `onMessages`. */
export type Handler = (messages: Message[]) => void | Promise<void>;

interface Delivery {
  readonly timeKey: number;
  readonly messages: readonly Message[];
  /** The connection it came on: an ack means something only there. */
  readonly gen: number;
}

export class Inbox {
  handler: Handler | undefined;
  readonly #seen = new Set<number>();
  readonly #chunks: { no: number; count: number }[] = [];
  readonly #queue: Delivery[] = [];
  #draining = false;

  constructor(
    private readonly seenMax: number,
    private readonly persist: Persist | undefined,
    private readonly ack: (timeKey: number, gen: number) => void,
    private readonly failed: (error: CourierError) => void,
  ) {}

  /** Takes in the stored seen ids. */
  restore(entries: Entry[]): void {
    const chunks = entries
      .filter(([key]) => key[0] === 's')
      .map(([key, ids]) => ({ no: +key.slice(1), ids: ids as number[] }))
      .sort((a, b) => a.no - b.no);
    for (const { no, ids } of chunks) {
      this.#chunks.push({ no, count: ids.length });
      this.#remember(ids);
    }
  }

  /** A delivery batch from courier. */
  push(timeKey: number, messages: readonly Message[], gen: number): void {
    this.#queue.push({ timeKey, messages, gen });
    void this.drain();
  }

  /** Hands queued batches to the handler, one at a time. */
  async drain(): Promise<void> {
    if (this.#draining) return;
    this.#draining = true;
    try {
      let delivery: Delivery | undefined;
      while (this.handler && (delivery = this.#queue[0])) {
        if (await this.#handle(this.handler, delivery)) this.ack(delivery.timeKey, delivery.gen);
        this.#queue.shift();
      }
    } finally {
      this.#draining = false;
    }
  }

  /** True when the batch may be acked. */
  async #handle(handler: Handler, { messages }: Delivery): Promise<boolean> {
    const fresh = messages.filter((m) => !this.#seen.has(m.id));
    if (fresh.length === 0) return true;
    try {
      await handler(fresh);
    } catch (cause) {
      this.failed(
        new CourierError('handler_failed', 'the onMessages handler failed: the batch is not acked and comes back', { cause }),
      );
      return false;
    }
    const ids = fresh.map((m) => m.id);
    this.#remember(ids);
    if (this.persist) {
      const no = (this.#chunks.at(-1)?.no ?? 0) + 1;
      this.#chunks.push({ no, count: ids.length });
      const del: string[] = [];
      let total = this.#chunks.reduce((sum, c) => sum + c.count, 0);
      while (total - this.#chunks[0]!.count >= this.seenMax) {
        total -= this.#chunks[0]!.count;
        del.push(`s${this.#chunks.shift()!.no}`);
      }
      await this.persist([[`s${no}`, ids]], del);
    }
    return true;
  }

  #remember(ids: readonly number[]): void {
    for (const id of ids) {
      this.#seen.delete(id);
      this.#seen.add(id);
    }
    for (const id of this.#seen) {
      if (this.#seen.size <= this.seenMax) break;
      this.#seen.delete(id);
    }
  }
}

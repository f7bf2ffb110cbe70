/** Waiting on events with timeouts, collecting deliveries, and tapping a client's socket. */

import WebSocket from 'ws';
import type { Client, ClientEvents, Message, WebSocketConstructor, WebSocketLike } from '../../src/index.js';

/** `promise`, or a rejection naming `what` after `ms`. */
export function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A send's promise, which must settle (be acked) within 10 s. */
export const acked = (send: Promise<void>): Promise<void> => within(10_000, 'the ack of a send', send);

/** Polls `check` (state with no event to wait on, e.g. in Redis) until it holds. */
export async function eventually(check: () => Promise<boolean>, what: string, ms = 15_000): Promise<void> {
  await within(ms, what, (async () => {
    while (!(await check())) await new Promise((resolve) => setTimeout(resolve, 50));
  })());
}

/** The next `event` of `client` that satisfies `accept`. */
export function next<K extends keyof ClientEvents>(
  client: Client,
  event: K,
  accept: (value: ClientEvents[K]) => boolean = () => true,
  ms = 15_000,
): Promise<ClientEvents[K]> {
  let off = (): void => undefined;
  const seen = new Promise<ClientEvents[K]>((resolve) => {
    off = client.on(event, (value) => {
      if (accept(value)) resolve(value);
    });
  });
  return within(ms, `${event} event`, seen).finally(() => off());
}

/** Waits until `client` is open. */
export const opened = (client: Client, ms = 15_000): Promise<unknown> =>
  client.state === 'open' ? Promise.resolve() : next(client, 'state', (s) => s.state === 'open', ms);

/** Everything a client's handler was given, in order, with a way to wait for more. */
export class Inbox {
  readonly messages: Message[] = [];

  /** An inbox set as `client`'s handler. */
  static of(client: Client): Inbox {
    const inbox = new Inbox();
    client.onMessages(inbox.handler);
    return inbox;
  }

  calls = 0;
  #waiters: (() => void)[] = [];

  /** The handler to give `onMessages`. */
  readonly handler = (messages: Message[]): void => {
    this.calls++;
    this.messages.push(...messages);
    for (const wake of this.#waiters.splice(0)) wake();
  };

  /** Waits until the handler has been given `count` messages in all. */
  async count(count: number, ms = 15_000): Promise<Message[]> {
    await this.until(() => this.messages.length >= count, `${count} messages (have ${this.messages.length})`, ms);
    return this.messages;
  }

  async until(check: () => boolean, what: string, ms = 15_000): Promise<void> {
    const wait = async (): Promise<void> => {
      while (!check()) await new Promise<void>((resolve) => this.#waiters.push(resolve));
    };
    await within(ms, what, wait());
  }

  texts(): string[] {
    return this.messages.map((m) => m.text);
  }
}

/** What a tapped socket saw, and how it may alter the traffic. */
export class Tap {
  /** Every frame the client wrote, in order, with the connection it went on (1, 2, ...). */
  readonly sent: { frame: string; connection: number }[] = [];
  /** Every frame the client received. */
  readonly received: { frame: string; connection: number }[] = [];
  /** Returns what to write instead of `frame` (undefined: drop it). */
  rewriteOut: ((frame: string) => string | undefined) | undefined;
  /** False: hide this incoming frame from the client. */
  passIn: ((frame: string) => boolean) | undefined;
  readonly #waiters = new Set<() => void>();
  /** The latest socket, for `inject`. */
  socket: WebSocket | undefined;

  /** Writes a frame of the test's own making on the client's current connection. */
  inject(frame: string): void {
    if (!this.socket) throw new Error('no socket to inject into');
    this.sent.push({ frame, connection: -1 });
    this.socket.send(frame);
  }

  /** Waits until `check` holds after some frame went by. */
  async until(check: () => boolean, what: string, ms = 15_000): Promise<void> {
    let wake = (): void => undefined;
    const wait = async (): Promise<void> => {
      while (!check()) {
        await new Promise<void>((resolve) => this.#waiters.add((wake = resolve)));
        this.#waiters.delete(wake);
      }
    };
    await within(ms, what, wait()).finally(() => this.#waiters.delete(wake));
  }

  /** @internal */
  saw(): void {
    for (const wake of [...this.#waiters]) wake();
  }
}

/** A `ws` WebSocket class that records (and may alter) a client's traffic. */
export function tapped(tap: Tap): WebSocketConstructor {
  let connections = 0;
  return class Tapped implements WebSocketLike {
    readonly #ws: WebSocket;
    readonly #connection = ++connections;
    onopen: ((event: unknown) => void) | null = null;
    onmessage: ((event: { data: unknown }) => void) | null = null;
    onclose: ((event: unknown) => void) | null = null;
    onerror: ((event: unknown) => void) | null = null;

    constructor(url: string, init?: WebSocket.ClientOptions) {
      const ws = (this.#ws = tap.socket = new WebSocket(url, init));
      ws.onopen = (event) => this.onopen?.(event);
      ws.onclose = (event) => this.onclose?.(event);
      ws.onerror = (event) => this.onerror?.(event);
      ws.onmessage = (event) => {
        const frame = String(event.data);
        tap.received.push({ frame, connection: this.#connection });
        if (tap.passIn?.(frame) !== false) this.onmessage?.({ data: frame });
        tap.saw();
      };
    }

    get readyState(): number {
      return this.#ws.readyState;
    }

    send(data: string): void {
      const frame = tap.rewriteOut ? tap.rewriteOut(data) : data;
      if (frame === undefined) return;
      tap.sent.push({ frame, connection: this.#connection });
      this.#ws.send(frame);
      tap.saw();
    }

    close(code?: number, reason?: string): void {
      this.#ws.close(code, reason);
    }
  };
}

export const newTap = (): Tap => new Tap();

/** Parsed frames of one type. */
export function framesOf(frames: readonly { frame: string; connection: number }[], type: string): Frame[] {
  return frames.flatMap(({ frame, connection }): Frame[] => {
    try {
      const parsed = JSON.parse(frame) as Omit<Frame, 'connection'>;
      return parsed.type === type ? [{ ...parsed, connection }] : [];
    } catch {
      return []; // a frame a test spoiled on purpose
    }
  });
}

/** A frame of the wire protocol, loosely typed for assertions. */
export interface Frame {
  type: string;
  time_key: number;
  connection: number;
  code?: string;
  messages?: { id?: number; sender_id: number; chat_id: number; content_text: string }[];
}

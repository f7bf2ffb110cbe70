/** A courier per test file, fresh users and chats per test, and clients on `ws`. */

import { after, before } from 'node:test';
import WebSocket from 'ws';
import { connect, type Client, type ConnectOptions } from '../../src/index.js';
import { TestEnv } from './env.js';

let lastId = 1000;

export interface User {
  readonly id: number;
  readonly token: string;
}

/** A new chat id that nobody is a member of. */
export const freeChat = (): number => ++lastId;

/** The courier (and Redis) of a test file or `describe` block, and the clients its tests open. */
export class Courier {
  #env: TestEnv | undefined;
  readonly #clients: Client[] = [];

  /** Starts a courier before the tests of the enclosing file or block (with these
   * settings), and closes its clients and stops it after them. */
  static suite(settings: Record<string, string | number> = {}): Courier {
    const courier = new Courier();
    before(async () => {
      courier.#env = await TestEnv.start(settings);
    });
    after(async () => {
      await Promise.all(courier.#clients.map((c) => c.close()));
      await courier.#env?.quit();
    });
    return courier;
  }

  get env(): TestEnv {
    if (!this.#env) throw new Error('courier is not started yet');
    return this.#env;
  }

  /** A client (the `ws` package's WebSocket unless the options say otherwise), closed after the tests. */
  client(token: ConnectOptions['token'], options: Partial<ConnectOptions> = {}): Client {
    const client = connect(this.env.ws, { token, WebSocket, ...options });
    this.#clients.push(client);
    return client;
  }

  /** A new user with a token valid for an hour. */
  async user(name: string): Promise<User> {
    const id = ++lastId;
    return { id, token: await this.env.token(id, name, 3600) };
  }

  /** Two new users, alice and bob, and a new chat with both. */
  async pair(): Promise<{ alice: User; bob: User; chat: number }> {
    const alice = await this.user('alice');
    const bob = await this.user('bob');
    const chat = ++lastId;
    await this.env.chat(chat, alice.id, bob.id);
    return { alice, bob, chat };
  }
}

/** Fresh users and chats per test, and clients on the `ws` package. */

import WebSocket from 'ws';
import { connect, type Client, type ConnectOptions } from '../../src/index.js';
import type { TestEnv } from './env.js';

let lastId = 1000;

export interface User {
  readonly id: number;
  readonly token: string;
}

/** Two new users, alice and bob, and a new chat with both. */
export async function pair(env: TestEnv): Promise<{ alice: User; bob: User; chat: number }> {
  const alice = await user(env, 'alice');
  const bob = await user(env, 'bob');
  const chat = ++lastId;
  await env.chat(chat, alice.id, bob.id);
  return { alice, bob, chat };
}

/** A new user with a token valid for an hour. */
export async function user(env: TestEnv, name: string): Promise<User> {
  const id = ++lastId;
  return { id, token: await env.token(id, name, 3600) };
}

/** A new chat id that nobody is a member of. */
export const freeChat = (): number => ++lastId;

/** A client of `env` (the `ws` package's WebSocket unless the options say otherwise). */
export function client(env: TestEnv, token: ConnectOptions['token'], options: Partial<ConnectOptions> = {}): Client {
  return connect(env.ws, { token, WebSocket, ...options });
}

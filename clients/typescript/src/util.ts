/** Small helpers shared by the modules of the SDK. */

const encoder = new TextEncoder();

/** Length of `text` in UTF-8 bytes (what courier's limits count). */
export const utf8Length = (text: string): number => encoder.encode(text).length;

/** Full-jitter exponential backoff: random(0, min(cap, base * 2^attempt)) ms. */
export const backoff = (attempt: number, base: number, cap: number): number =>
  Math.random() * Math.min(cap, base * 2 ** Math.min(attempt, 30));

/** The integer `id` claim of a JWT, read without checking the signature (courier does). */
export function tokenUserId(token: string): number | undefined {
  try {
    const payload = token.split('.')[1] ?? '';
    const claims: unknown = JSON.parse(atob(payload.replace(/-/g, '+').replace(/_/g, '/')));
    const id = (claims as { id?: unknown }).id;
    return typeof id === 'number' && Number.isSafeInteger(id) && id >= 0 ? id : undefined;
  } catch {
    return undefined;
  }
}

/** A fresh local key for an outgoing message (unique across reloads in practice). */
let counter = 0;
export const localKey = (): string =>
  `${Date.now().toString(36)}-${(counter++).toString(36)}-${Math.random().toString(36).slice(2, 8)}`;

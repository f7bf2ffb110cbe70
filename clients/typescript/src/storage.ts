/**
 * Where the persistent outbox lives: a tiny key-value interface, with an IndexedDB
 * implementation for browsers and an in-memory one (for tests, or to hand an outbox
 * from one client to the next within a process).
 */

/** A stored entry: a key and a structured-cloneable (JSON-like) value. */
export type Entry = [key: string, value: unknown];

/**
 * The storage behind a persistent outbox. Implement it to persist elsewhere (a file
 * in Node, SQLite, ...).
 *
 * What the SDK relies on: `write` is atomic (all of it or nothing survives a crash or
 * a reload) and writes take effect in the order they were called; `load` returns
 * everything written before.
 */
export interface OutboxStorage {
  /** Every stored entry, in any order. */
  load(): Promise<Entry[]>;
  /** Deletes `del`, then puts `put`, as one atomic step. */
  write(put: Entry[], del: string[]): Promise<void>;
}

/**
 * An outbox in IndexedDB, in the database `name` (one object store, `kv`). Each write
 * is one readwrite transaction; IndexedDB runs transactions on the same store in the
 * order they were created, which is the order of the `write` calls.
 */
export function indexedDbStorage(name: string): OutboxStorage {
  let db: Promise<IDBDatabase> | undefined;
  const open = (): Promise<IDBDatabase> =>
    (db ??= new Promise((resolve, reject) => {
      const request = indexedDB.open(name, 1);
      request.onupgradeneeded = () => request.result.createObjectStore('kv');
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    }));
  const run = async <T>(
    mode: IDBTransactionMode,
    body: (store: IDBObjectStore) => () => T,
  ): Promise<T> => {
    const transaction = (await open()).transaction('kv', mode);
    const result = body(transaction.objectStore('kv'));
    return new Promise((resolve, reject) => {
      transaction.oncomplete = () => resolve(result());
      transaction.onerror = transaction.onabort = () => reject(transaction.error);
    });
  };
  return {
    load: () =>
      run('readonly', (store) => {
        const keys = store.getAllKeys();
        const values = store.getAll();
        return () => keys.result.map((key, i): Entry => [String(key), values.result[i]]);
      }),
    write: (put, del) =>
      run('readwrite', (store) => {
        for (const key of del) store.delete(key);
        for (const [key, value] of put) store.put(value, key);
        return () => undefined;
      }),
  };
}

/** An outbox in memory: survives a client, not the process. */
export function memoryStorage(): OutboxStorage {
  const entries = new Map<string, unknown>();
  return {
    load: async () => [...entries],
    write: async (put, del) => {
      for (const key of del) entries.delete(key);
      for (const [key, value] of put) entries.set(key, structuredClone(value));
    },
  };
}

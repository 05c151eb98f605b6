// The page's image history, kept in the browser (IndexedDB) across reloads:
//
//   database "wsd-history" (version 1), object store "images", key "id" (auto-increment:
//   key order is the order of storing), one record per generated image:
//     {id, created: ms since the epoch,
//      png: Blob (image/png, with the tEXt "parameters" chunk the download carries),
//      parameters: that chunk's JSON text,
//      settings: {prompt, negativePrompt, steps, guidanceScale, scheduler,
//                 seed: decimal string (64-bit seeds stay exact), strength?, image?: Blob},
//      model, configHash, dtype, width, height}      (the bundle that made it)
//
// Listed newest first (by `created`). At most MAX_ENTRIES records are kept (the first stored
// go first). Where the browser has no
// IndexedDB (some private modes) or refuses to store (quota), the history lives in the page
// only, and the caller is told why (a message, never a failure of the generation).

const DB_NAME = "wsd-history";
const DB_VERSION = 1;
const STORE = "images";
export const MAX_ENTRIES = 50;

const request = (r) => new Promise((resolve, reject) => {
  r.onsuccess = () => resolve(r.result);
  r.onerror = () => reject(r.error);
});

const completion = (tx) => new Promise((resolve, reject) => {
  tx.oncomplete = () => resolve();
  tx.onerror = () => reject(tx.error);
  tx.onabort = () => reject(tx.error || new Error("the transaction was aborted"));
});

function openDB() {
  if (typeof indexedDB === "undefined") {
    return Promise.reject(new Error("this browser has no IndexedDB"));
  }
  const r = indexedDB.open(DB_NAME, DB_VERSION);
  r.onupgradeneeded = () => {
    if (!r.result.objectStoreNames.contains(STORE)) {
      r.result.createObjectStore(STORE, { keyPath: "id", autoIncrement: true });
    }
  };
  return request(r);
}

function why(err) {
  const name = err && err.name ? `${err.name}: ` : "";
  return `${name}${err && err.message ? err.message : String(err)}`;
}

export class History {
  constructor() {
    this.entries = []; // newest first; those the browser did not store have no id
    this.db = null;
    this.problem = null; // why the history is not kept across reloads, if it is not
  }

  /** The stored history (newest first); an empty one kept in the page if storage fails. */
  static async open() {
    const history = new History();
    try {
      history.db = await openDB();
      const tx = history.db.transaction(STORE, "readonly");
      const all = await request(tx.objectStore(STORE).getAll());
      history.entries = all.sort((a, b) => (b.created - a.created) || (b.id - a.id));
    } catch (err) {
      history.db = null;
      history.problem = `the image history cannot be kept across reloads (${why(err)})`;
    }
    return history;
  }

  /** Add a record (newest); drop the oldest beyond MAX_ENTRIES. Returns null, or a message
   * when the browser refused to store it (it stays in the page's history). */
  async add(record) {
    const entry = { ...record };
    this.entries.unshift(entry);
    const dropped = this.entries.splice(MAX_ENTRIES);
    if (!this.db) return this.problem;
    try {
      const tx = this.db.transaction(STORE, "readwrite");
      const store = tx.objectStore(STORE);
      const done = completion(tx);
      done.catch(() => {});
      entry.id = await request(store.add(record));
      const keys = await request(store.getAllKeys());
      for (const key of keys.slice(0, Math.max(0, keys.length - MAX_ENTRIES))) {
        store.delete(key);
      }
      await done;
      return null;
    } catch (err) {
      delete entry.id;
      return `the browser refused to store this image in the history (${why(err)}); it is ` +
        `kept until the page is closed`;
    } finally {
      for (const e of dropped) revoke(e);
    }
  }

  /** Forget every image, stored or not. */
  async clear() {
    for (const e of this.entries) revoke(e);
    this.entries = [];
    if (!this.db) return;
    const tx = this.db.transaction(STORE, "readwrite");
    const done = completion(tx);
    tx.objectStore(STORE).clear();
    await done;
  }
}

/** An object URL for the entry's PNG (made once; freed when the entry goes). */
export function entryURL(entry) {
  if (!entry.url) entry.url = URL.createObjectURL(entry.png);
  return entry.url;
}

function revoke(entry) {
  if (entry.url) URL.revokeObjectURL(entry.url);
  entry.url = null;
}

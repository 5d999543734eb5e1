/**
 * stabilizer/presence.js: a copy of one channel's presence (docs/protocol.md 6.8), kept by
 * the "presence_state" and "presence_diff" frames (Phoenix's syncState and syncDiff).
 * `list()` maps a key (a user id, else a client id) to one {client_id, meta} per
 * connection.
 */

function items(value) {
  return Array.isArray(value)
    ? value.filter((item) => item && typeof item === "object" && typeof item.client_id === "string")
    : [];
}

function entries(presence) {
  return presence && typeof presence === "object" && !Array.isArray(presence)
    ? Object.entries(presence) : [];
}

export class Presence {
  #state = new Map();  // key -> Map(client id -> item)
  #listeners = new Set();

  constructor(channel) {
    this.channel = channel;
    this.synced = false;  // a presence_state arrived
  }

  /** The presence now: {key: [{client_id, meta}, ...]}, keys and items in order. */
  list() {
    // fromEntries defines own properties: a key such as "__proto__" (user ids are user
    // input) is listed like any other instead of replacing the object's prototype
    return Object.fromEntries([...this.#state.keys()].sort().map((key) => {
      const held = this.#state.get(key);
      return [key, [...held.keys()].sort().map((id) => held.get(id))];
    }));
  }

  /** How many connections the copy lists. */
  count() {
    let n = 0;
    for (const held of this.#state.values()) n += held.size;
    return n;
  }

  /** Call `listener(joins, leaves)` after every change; returns a function that stops it. */
  onChange(listener) {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Take a "presence_state" or "presence_diff" frame of this channel. */
  apply(frame) {
    let changed;
    if (frame.type === "presence_state") {
      const before = this.list();
      this.#state = new Map();
      this.#add(frame.presence);
      this.synced = true;
      changed = { joins: missing(this.list(), before), leaves: missing(before, this.list()) };
    } else {
      for (const [key, left] of entries(frame.leaves)) {
        const held = this.#state.get(key);
        if (!held) continue;
        for (const item of items(left)) held.delete(item.client_id);
        if (!held.size) this.#state.delete(key);
      }
      this.#add(frame.joins);
      changed = { joins: Object.fromEntries(entries(frame.joins)),
                  leaves: Object.fromEntries(entries(frame.leaves)) };
    }
    for (const listener of [...this.#listeners]) {
      try {
        listener(changed.joins, changed.leaves);
      } catch (err) {
        console.error(`stabilizer: a presence listener of ${this.channel} failed`, err);
      }
    }
  }

  #add(presence) {
    for (const [key, joined] of entries(presence)) {
      for (const item of items(joined)) {
        if (!this.#state.has(key)) this.#state.set(key, new Map());
        this.#state.get(key).set(item.client_id, item);
      }
    }
  }
}

/** The items of `a` that `b` does not hold (compared as JSON), by key. */
function missing(a, b) {
  const out = [];
  for (const [key, list] of Object.entries(a)) {
    const kept = Object.hasOwn(b, key) ? b[key] : [];  // b["__proto__"] alone is a prototype
    const other = new Set(kept.map((item) => JSON.stringify(item)));
    const gone = list.filter((item) => !other.has(JSON.stringify(item)));
    if (gone.length) out.push([key, gone]);
  }
  return Object.fromEntries(out);
}

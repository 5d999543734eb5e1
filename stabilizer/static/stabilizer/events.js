/**
 * stabilizer/events.js: the listeners of a connection's events, and calling application
 * code so that an exception it throws is reported without breaking the connection.
 */

export const EVENTS = ["state", "session", "message", "resume", "error", "unsubscribed"];

/** The listeners of each event in EVENTS. */
export class Listeners {
  #listeners = new Map(EVENTS.map((event) => [event, new Set()]));

  add(event, fn) {
    const listeners = this.#listeners.get(event);
    if (!listeners) throw new TypeError(`stabilizer: unknown event ${event}; use ${EVENTS}`);
    listeners.add(fn);
  }

  delete(event, fn) {
    this.#listeners.get(event)?.delete(fn);
  }

  /** Call each listener of `event` (one added meanwhile waits for the next one). */
  emit(event, ...args) {
    for (const fn of [...this.#listeners.get(event)]) callSafely(fn, ...args);
  }
}

/** Call `fn`; what it throws is reported as uncaught, and the caller goes on. */
export function callSafely(fn, ...args) {
  try {
    fn(...args);
  } catch (err) {
    queueMicrotask(() => { throw err; });  // report it, keep the connection going
  }
}

/**
 * stabilizer/watchdog.js: the silent-link watchdog. A socket that sent nothing for 1.5
 * heartbeat intervals gets a ping; one that answers nothing within probeTimeoutMs either is
 * dead, and the connection drops it instead of waiting for the browser to notice. So is one
 * that does not open within connectTimeoutMs: a browser may wait for good for the answer to
 * an upgrade, and a server may say nothing after it.
 */

import { later } from "./timers.js";

/** Watches a connection's current socket. */
export class Watchdog {
  #timer = null; #lastSeen = 0; #probing = false;
  #link;  // () => {ws, intervalMs, probeTimeoutMs}: the socket to watch now, and its bounds
  #dead;  // (ws, reason) => void: `ws` did not open in time, or answered no probe

  constructor(link, dead) {
    this.#link = link;
    this.#dead = dead;
  }

  /** A frame came: the link is alive. */
  heard() {
    this.#lastSeen = Date.now();
    this.#probing = false;
  }

  stop() {
    clearTimeout(this.#timer);
  }

  /** Drop `ws`, a socket being opened, unless watch() begins within `timeoutMs` (0 or
   * Infinity: no deadline). */
  opening(ws, timeoutMs) {
    clearTimeout(this.#timer);
    if (!(timeoutMs > 0)) return;
    this.#timer = later(() => this.#dead(ws, `not open within ${timeoutMs} ms`), timeoutMs);
  }

  /** Probe a silent link with a ping; drop it when the probe gets no answer either. */
  watch() {
    clearTimeout(this.#timer);
    const { ws, intervalMs, probeTimeoutMs } = this.#link();
    if (!ws || !(intervalMs > 0) || !(probeTimeoutMs > 0)) return;
    const idle = Date.now() - this.#lastSeen;
    if (idle < intervalMs) {
      this.#timer = later(() => this.watch(), intervalMs - idle);
    } else if (!this.#probing) {
      this.#probing = true;
      ws.send('{"type":"ping"}');
      this.#timer = later(() => this.watch(), probeTimeoutMs);  // (Infinity: waits for good)
    } else {
      this.#dead(ws, "no answer to a ping");
    }
  }
}

/**
 * stabilizer/watchdog.js: the silent-link watchdog. A socket that sent nothing for 1.5
 * heartbeat intervals gets a ping; one that answers nothing within probeTimeoutMs either is
 * dead, and the connection drops it instead of waiting for the browser to notice.
 */

import { later } from "./timers.js";

/** Watches a connection's current socket. */
export class Watchdog {
  #timer = null; #lastSeen = 0; #probing = false;
  #link;  // () => {ws, intervalMs, probeTimeoutMs}: the socket to watch now, and its bounds
  #dead;  // (ws) => void: `ws` answered no probe

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
      this.#dead(ws);
    }
  }
}

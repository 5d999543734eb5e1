/**
 * stabilizer.js: the browser client of stabilizer (client protocol version 1, docs/protocol.md).
 * One dependency-free ES module, served by stabilizer's router at GET /stabilizer.js.
 *
 *   import { connect } from "/stabilizer.js";
 *   const conn = connect(`wss://${location.host}/ws/alice`);
 *   conn.on("state", (state, info) => {});   // "connecting" | "open" | "reconnecting" | "closed"
 *   conn.on("session", (frame) => {});       // {client_id, node_id, resumed, token, ...}
 *   conn.on("message", (data, position) => {}); // string or ArrayBuffer; position is
 *                                            //   {stream, offset, epoch} with history, else null
 *   conn.on("resume", (frame) => {});        // {recovered, replayed, failed}: resync if !recovered
 *   conn.on("error", (frame) => {});         // {code, detail}: the server dropped a message
 *   conn.send("hi");                         // queued while not open; throws once closed
 *   conn.close();                            // for good: state "closed", no reconnect
 *
 * connect(url, options) returns a Connection; `url` is ws:, wss:, http:, https: or relative.
 * Options (all optional):
 *   token            a reconnect token to resume with on the first connect
 *   maxQueue         frames send() keeps while not open (100); past it send() throws
 *   backoffBaseMs    full-jitter backoff: after n failures in a row a retry waits
 *   backoffCapMs       uniform(0, min(cap, base * 2^n)) ms (250, 30000)
 *   stableAfterMs    a connection closed sooner after opening counts as a failure for the
 *                    backoff: a server failing right after the handshake is not hammered (5000)
 *   maxAttempts      attempts in a row that fail to open before giving up (Infinity)
 *   maxAdviceMs      upper bound on the server's {"retry_ms": N} close-reason advice (60000)
 *   probeTimeoutMs   after 1.5 heartbeat intervals of silence the client sends {"type":"ping"};
 *                    no frame within this many ms: the link is dead, reconnect (10000; 0: off)
 *   protocols        WebSocket subprotocols
 *
 * Connection: .state, .session (the last session frame), .token (the newest token),
 * .positions ({stream: [offset, epoch]}), .on(event, fn) (returns an unsubscribe function),
 * .off(event, fn), .send(data) (string, ArrayBuffer, view or Blob; anything else is sent as
 * JSON; true when written now, false when queued), .close(code = 1000, reason = "").
 *
 * The state is "connecting" until the first open, "reconnecting" after any drop. The
 * connection opens on the server's session frame (or on its first frame when the server
 * sends none), answers pings with `pong`, keeps the newest token and reconnects with ?token=
 * (and ?positions= when history is on). Close codes (protocol section 5): 1001, 1005, 1006,
 * 1011, 1012, 1013, 1014 and 4000-4499 reconnect, 1012/1013 after the close-reason advice
 * {"retry_ms": N} when there is one, the others after the backoff; 4501/4502 after a connect
 * that carried a token reconnect at once without it (a fresh session); any other code is
 * final ("closed"). After a reconnect that cannot replay what was missed (no history, or the
 * session was not resumed) the client emits "resume" with {recovered: false} itself, so one
 * listener tells the application to resync. A frame sent just before an unannounced drop
 * may be lost: the server acknowledges nothing.
 */

const EVENTS = ["state", "session", "message", "resume", "error"];
const RETRY_CODES = new Set([1001, 1005, 1006, 1011, 1012, 1013, 1014]);
const TOKEN_CODES = new Set([4501, 4502]);
const ADVICE_CODES = new Set([1012, 1013]);
const CONTROL_TYPES = new Set(["session", "ping", "pong", "resume", "error", "message"]);
const MAX_TIMER_MS = 2 ** 31 - 1;
const DEFAULTS = {
  token: null, maxQueue: 100, backoffBaseMs: 250, backoffCapMs: 30000, stableAfterMs: 5000,
  maxAttempts: Infinity, maxAdviceMs: 60000, probeTimeoutMs: 10000, protocols: undefined,
};

/** Open a stabilizer connection that reconnects by itself; see the comment above. */
export function connect(url, options = {}) {
  return new Connection(url, options);
}

export class Connection {
  #url; #options; #ws = null; #state = "connecting"; #session = null; #token;
  #positions = {}; #history = false; #queue = []; #listeners = new Map();
  #failures = 0; #unopened = 0; #sentToken = false; #openedAt = null; #everOpened = false;
  #retryTimer = null; #watchdog = null; #lastSeen = 0; #probing = false;

  constructor(url, options = {}) {
    this.#url = webSocketUrl(url);
    this.#options = { ...DEFAULTS, ...options };
    this.#token = this.#options.token || null;
    for (const event of EVENTS) this.#listeners.set(event, new Set());
    this.#open();
  }

  get state() { return this.#state; }
  get session() { return this.#session; }
  get token() { return this.#token; }
  get positions() { return structuredClone(this.#positions); }

  /** Call `fn` on `event`; return a function that removes it. */
  on(event, fn) {
    const listeners = this.#listeners.get(event);
    if (!listeners) throw new TypeError(`stabilizer: unknown event ${event}; use ${EVENTS}`);
    listeners.add(fn);
    return () => this.off(event, fn);
  }

  /** Stop calling `fn` on `event`. */
  off(event, fn) {
    this.#listeners.get(event)?.delete(fn);
  }

  /** Send now when open (true), queue while (re)connecting (false); throw when closed. */
  send(data) {
    if (this.#state === "closed") {
      throw new Error("stabilizer: the connection is closed for good; call connect() again");
    }
    const binary = data instanceof ArrayBuffer || ArrayBuffer.isView(data) || data instanceof Blob;
    const frame = typeof data === "string" || binary ? data : JSON.stringify(data);
    if (this.#state === "open") {
      this.#ws.send(frame);
      return true;
    }
    if (this.#queue.length >= this.#options.maxQueue) {
      throw new Error(`stabilizer: ${this.#queue.length} frames already wait while ` +
                      `${this.#state}; send again once the state is "open"`);
    }
    this.#queue.push(frame);
    return false;
  }

  /** Close for good: no reconnect, queued frames are dropped, the state becomes "closed". */
  close(code = 1000, reason = "") {
    if (this.#state === "closed") return;
    const ws = this.#ws;
    this.#ws = null;
    this.#finish({ code, reason });
    try {
      ws?.close(code, reason);
    } catch (err) {  // a code browsers may not send (only 1000, 3000-4999): close anyway
      ws.close();
      throw err;
    }
  }

  #open() {
    this.#retryTimer = null;
    const url = new URL(this.#url);
    url.searchParams.delete("token");
    url.searchParams.delete("positions");
    this.#sentToken = Boolean(this.#token);
    this.#openedAt = null;
    if (this.#token) {
      url.searchParams.set("token", this.#token);
      if (Object.keys(this.#positions).length) {
        url.searchParams.set("positions", JSON.stringify(this.#positions));
      }
    }
    const ws = new WebSocket(url, this.#options.protocols);
    ws.binaryType = "arraybuffer";
    ws.onmessage = (event) => this.#receive(ws, event.data);
    ws.onclose = (event) => this.#closed(ws, event.code, event.reason);
    this.#ws = ws;
  }

  #receive(ws, data) {
    if (ws !== this.#ws) return;
    this.#lastSeen = Date.now();
    this.#probing = false;
    const frame = typeof data === "string" ? controlFrame(data) : null;
    switch (frame?.type) {
      case "ping": ws.send("pong"); return;
      case "pong": return;
      case "session": this.#welcome(frame); return;
      case "resume": this.#emit("resume", frame); return;
      case "error": this.#emit("error", frame); return;
      case "message":
        if (this.#history && this.#unwrap(frame)) return;
        break;
    }
    this.#deliver(data, null);
  }

  #welcome(frame) {
    this.#session = frame;
    this.#history = frame.history === true;
    this.#token = frame.token ?? null;
    if (!frame.resumed) this.#positions = {};
    const reconnect = this.#everOpened;
    this.#emit("session", frame);
    this.#becomeOpen();
    if (reconnect && !(frame.resumed && this.#history)) {  // no resume frame will come
      this.#emit("resume", { type: "resume", recovered: false, replayed: 0, failed: [] });
    }
  }

  #becomeOpen() {
    if (this.#state === "open" || this.#state === "closed") return;
    this.#openedAt = Date.now();
    this.#everOpened = true;
    this.#unopened = 0;
    for (const frame of this.#queue.splice(0)) this.#ws.send(frame);
    this.#setState("open", null);
    this.#watch();
  }

  /** Deliver a history-wrapped message once; false when the frame is not one. */
  #unwrap(frame) {
    const { stream, offset, epoch } = frame;
    let data = frame.data;
    try {
      if (typeof frame.data_b64 === "string") data = fromBase64(frame.data_b64);
    } catch {
      console.warn(`stabilizer: dropped a message on ${stream} with invalid data_b64`);
      return true;
    }
    if (typeof stream !== "string" || data === undefined) return false;
    if (Number.isInteger(offset) && typeof epoch === "string") {
      const seen = this.#positions[stream];
      if (seen && seen[1] === epoch && offset <= seen[0]) return true;  // a duplicate
      this.#positions[stream] = [offset, epoch];
    }  // else the server could not sequence it (its store was down): deliver, record nothing
    this.#deliver(data, { stream, offset: offset ?? null, epoch: epoch ?? null });
    return true;
  }

  #deliver(data, position) {
    this.#becomeOpen();  // a server that sends no session frame is open on its first frame
    this.#emit("message", data, position);
  }

  #closed(ws, code, reason) {
    if (ws !== this.#ws) return;
    this.#ws = null;
    clearTimeout(this.#watchdog);
    const info = { code, reason };
    const options = this.#options;
    const stable = this.#openedAt !== null && Date.now() - this.#openedAt >= options.stableAfterMs;
    this.#failures = stable ? 0 : this.#failures + 1;
    if (this.#openedAt === null) this.#unopened += 1;
    if (TOKEN_CODES.has(code) && this.#sentToken) {
      this.#token = null;  // rejected: one fresh session without it
      this.#positions = {};
      this.#retry(0, info);
    } else if (!RETRY_CODES.has(code) && !(code >= 4000 && code <= 4499)) {
      this.#finish(info);
    } else if (this.#unopened >= options.maxAttempts) {
      this.#finish({ ...info, reason: `${this.#unopened} attempts in a row failed: ${reason}` });
    } else {
      const ceiling = Math.min(options.backoffCapMs,
                               options.backoffBaseMs * 2 ** Math.min(this.#failures, 30));
      const advice = ADVICE_CODES.has(code) ? retryAdvice(reason) : null;
      this.#retry(advice === null ? Math.random() * ceiling
                                  : Math.min(advice, options.maxAdviceMs), info);
    }
  }

  #retry(delayMs, info) {
    const state = this.#everOpened ? "reconnecting" : "connecting";
    this.#setState(state, { ...info, delay_ms: Math.round(delayMs) });
    this.#retryTimer = setTimeout(() => this.#open(), delayMs);
  }

  #finish(info) {
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#watchdog);
    this.#queue = [];
    this.#setState("closed", info);
  }

  /** Probe a silent link with a ping; drop it when the probe gets no answer either. */
  #watch() {
    clearTimeout(this.#watchdog);
    const interval = Number(this.#session?.heartbeat_interval) * 1500;  // pings are due by then
    const { probeTimeoutMs } = this.#options;
    const ws = this.#ws;
    if (!ws || !(interval > 0) || !(probeTimeoutMs > 0)) return;
    const idle = Date.now() - this.#lastSeen;
    if (idle < interval) {
      this.#watchdog = setTimeout(() => this.#watch(), Math.min(interval - idle, MAX_TIMER_MS));
    } else if (!this.#probing) {
      this.#probing = true;
      ws.send('{"type":"ping"}');
      this.#watchdog = setTimeout(() => this.#watch(), probeTimeoutMs);
    } else {
      this.#closed(ws, 1006, "no answer to a ping");  // the link is dead: do not wait for it
      ws.close();
    }
  }

  #setState(state, info) {
    if (state === this.#state) return;
    this.#state = state;
    this.#emit("state", state, info);
  }

  #emit(event, ...args) {
    for (const fn of [...this.#listeners.get(event)]) {
      try {
        fn(...args);
      } catch (err) {
        queueMicrotask(() => { throw err; });  // report it, keep the connection going
      }
    }
  }
}

function webSocketUrl(url) {
  const parsed = new URL(url, globalThis.location?.href);
  parsed.protocol = parsed.protocol.replace(/^http/, "ws");  // http: -> ws:, https: -> wss:
  if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
    throw new SyntaxError(`stabilizer: ${url} is not a ws:, wss:, http: or https: URL`);
  }
  parsed.hash = "";
  return parsed.href;
}

/** The protocol frame in `text`, or null when it is an application message. */
function controlFrame(text) {
  if (!text.startsWith("{") || !text.includes('"type"')) return null;
  try {
    const value = JSON.parse(text);
    return value && CONTROL_TYPES.has(value.type) ? value : null;
  } catch {
    return null;
  }
}

/** The delay a 1012/1013 close reason asks for, in ms, or null for free text. */
function retryAdvice(reason) {
  try {
    const ms = JSON.parse(reason)?.retry_ms;
    return Number.isFinite(ms) && ms >= 0 ? ms : null;
  } catch {
    return null;
  }
}

function fromBase64(text) {
  return Uint8Array.from(atob(text), (char) => char.charCodeAt(0)).buffer;
}

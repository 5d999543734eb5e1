/**
 * stabilizer.js: the browser client of stabilizer (client protocol versions 1 and 2,
 * docs/protocol.md). One dependency-free ES module, served by stabilizer's router at
 * GET /stabilizer.js.
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
 *   await conn.rpc("add", {a: 1, b: 2});     // v2: the server procedure's result, or an
 *                                            //   RPCError {code, message, data}
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
 *   protocol         2 speaks protocol v2 (section 6); 1, the default, the plain protocol
 *   getToken         v2: a function returning the access token (a string, null for none, or
 *                    a Promise of one); called before every connect and reconnect and when
 *                    the server asks for a refresh
 *   device           v2: this client instance's id (1-64 of A-Z a-z 0-9 . _ ~ -); default: one
 *                    made up per tab and URL, kept in sessionStorage with the newest token so
 *                    that a reload resumes the session
 *   params           v2: an object for the server's authenticator
 *
 * Connection: .state, .session (the last session frame), .token (the newest token),
 * .positions ({stream: [offset, epoch]}), .protocol, .clientId, .userId (null when
 * anonymous), .device and .expiresAt (v2: Unix seconds, moved on by each refresh; null
 * without expiry), .on(event, fn) (returns an unsubscribe function),
 * .off(event, fn), .send(data) (string, ArrayBuffer, view or Blob; anything else is sent as
 * JSON; true when written now, false when queued), .close(code = 1000, reason = ""),
 * .rpc(method, params = null, {timeoutMs = 30000}) (v2: a Promise of the result of the
 * server's procedure `method`; it waits while reconnecting and rejects with an RPCError
 * whose code is the server's, or "timeout" (no reply in time) or "disconnected" (the socket
 * closed before the reply; in both the call may have run, and it is never sent twice), or
 * "closed" (closed for good before it was sent)). A v2 message frame that asks to be
 * acknowledged (the server's send_to_client(..., ack=True)) is acknowledged once the
 * listeners it went to returned. .subscribe(channel, onMessage = null,
 * {params, timeoutMs}) (v2: join `channel` if the server's on_subscribe hook allows;
 * onMessage(data, position) then gets its messages instead of the "message" listeners; after
 * a reconnect that kept no memberships (no history, or a fresh session) it subscribes again), .unsubscribe(channel) and
 * .publish(channel, data) (v2: through the server's on_publish hook); the three are Promises
 * rejected with an RPCError as rpc is.
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
 *
 * Protocol v2 (`protocol: 2`) offers the subprotocol stabilizer.v2 and sends the token, the
 * device, the reconnect token and the positions in a first `connect` frame, never in the URL;
 * text is sent and received wrapped in `message` frames (any JSON the application sends is
 * just data). A `refresh` frame is answered with a fresh token from getToken; if getToken
 * fails (or gives none) nothing is sent, the server closes with 4003 when the credentials
 * expire, and the reconnect asks getToken again. 4003 reconnects after the backoff, 4004 (the
 * user has too many connections) after the close-reason advice, 4505 (credentials refused) is
 * final. A getToken that throws fails that attempt (retried with the backoff); one that
 * returns something other than a string or null closes the connection with code null. So does
 * a server that opens the socket without choosing stabilizer.v2; Chromium refuses such a
 * handshake itself, so there it shows as a connection that never opens (code 1006). The
 * default device is guarded with the Web Locks API (secure contexts): a duplicated tab, whose
 * sessionStorage is a copy, makes up its own device instead of taking over the original's
 * session.
 */

const EVENTS = ["state", "session", "message", "resume", "error"];
const RETRY_CODES = new Set([1001, 1005, 1006, 1011, 1012, 1013, 1014]);
const TOKEN_CODES = new Set([4501, 4502]);
const ADVICE_CODES = new Set([1012, 1013, 4004]);
const CONTROL_TYPES = new Set(["session", "ping", "pong", "resume", "error", "message"]);
const MAX_TIMER_MS = 2 ** 31 - 1;
const SUBPROTOCOL = "stabilizer.v2";
const DEVICE = /^[A-Za-z0-9._~-]{1,64}$/;
const HELD = new Map();  // device -> release(): the default devices this page holds
const DEFAULTS = {
  token: null, maxQueue: 100, backoffBaseMs: 250, backoffCapMs: 30000, stableAfterMs: 5000,
  maxAttempts: Infinity, maxAdviceMs: 60000, probeTimeoutMs: 10000, protocols: undefined,
  protocol: 1, getToken: null, device: null, params: null,
};

/** A remote procedure call that returned no value: the server's error, or the client's
 * "timeout", "disconnected" or "closed" (see rpc above). */
export class RPCError extends Error {
  constructor(code, message = "", data = null) {
    super(message ? `${code}: ${message}` : code);
    this.name = "RPCError";
    this.code = code;
    this.data = data;
  }
}

/** Open a stabilizer connection that reconnects by itself; see the comment above. */
export function connect(url, options = {}) {
  return new Connection(url, options);
}

export class Connection {
  #url; #options; #ws = null; #state = "connecting"; #session = null; #token;
  #positions = {}; #history = false; #queue = []; #listeners = new Map();
  #failures = 0; #unopened = 0; #sentToken = false; #openedAt = null; #everOpened = false;
  #retryTimer = null; #watchdog = null; #lastSeen = 0; #probing = false;
  #v2; #device; #claimed = false; #storeKey = null; #expiresAt = null; #refreshing = false;
  #calls = new Map(); #nextCall = 1;  // call id -> {ws (null until sent), frame, settle}
  #channels = new Map();  // subscribed channel -> {onMessage, params}

  constructor(url, options = {}) {
    this.#url = webSocketUrl(url);
    this.#options = { ...DEFAULTS, ...options };
    checkOptions(this.#options);
    this.#v2 = this.#options.protocol === 2;
    this.#device = this.#options.device || null;
    this.#token = this.#options.token || null;
    for (const event of EVENTS) this.#listeners.set(event, new Set());
    this.#open();
  }

  get state() { return this.#state; }
  get session() { return this.#session; }
  get token() { return this.#token; }
  get positions() { return structuredClone(this.#positions); }
  get protocol() { return this.#v2 ? 2 : 1; }
  get clientId() { return this.#session?.client_id ?? null; }
  get userId() { return this.#session?.user_id ?? null; }
  get device() { return this.#device; }
  get expiresAt() { return this.#expiresAt; }

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
    let frame = typeof data === "string" || binary ? data : JSON.stringify(data);
    if (this.#v2 && !binary) frame = JSON.stringify({ type: "message", data: frame });
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

  /** v2: call the server's procedure `method`; a Promise of its result (see above). */
  rpc(method, params = null, { timeoutMs = 30000 } = {}) {
    const body = { type: "rpc", method };
    if (params !== null && params !== undefined) body.params = params;
    return this.#request(body, timeoutMs);
  }

  /** v2: join `channel` if the server's on_subscribe hook allows it; `onMessage(data,
   * position)` then gets its messages instead of the "message" listeners. */
  async subscribe(channel, onMessage = null, { params = null, timeoutMs = 30000 } = {}) {
    const body = { type: "subscribe", channel };
    if (params !== null && params !== undefined) body.params = params;
    await this.#request(body, timeoutMs);
    this.#channels.set(channel, { onMessage, params });
  }

  /** v2: leave `channel`. */
  async unsubscribe(channel, { timeoutMs = 30000 } = {}) {
    this.#channels.delete(channel);
    await this.#request({ type: "unsubscribe", channel }, timeoutMs);
  }

  /** v2: send `data` (a string, or an object or array sent as JSON) to `channel`'s members
   * if the server's on_publish hook allows it. */
  async publish(channel, data, { timeoutMs = 30000 } = {}) {
    await this.#request({ type: "publish", channel, data }, timeoutMs);
  }

  /** After a reconnect into a fresh session the server forgot the subscriptions. */
  async #subscribeAgain() {
    for (const [channel, entry] of [...this.#channels]) {
      const body = { type: "subscribe", channel };
      if (entry.params !== null && entry.params !== undefined) body.params = entry.params;
      try {
        await this.#request(body, 30000);
      } catch (err) {
        if (["timeout", "disconnected", "unavailable", "closed"].includes(err.code)) continue;
        console.warn(`stabilizer: channel ${channel} was not subscribed again: ${err.message}`);
        if (this.#channels.get(channel) === entry) this.#channels.delete(channel);
      }
    }
  }

  #request(fields, timeoutMs) {
    if (!this.#v2) {
      return Promise.reject(new TypeError(`stabilizer: ${fields.type} needs protocol: 2`));
    }
    if (this.#state === "closed") {
      return Promise.reject(new RPCError("closed", "the connection is closed for good"));
    }
    const id = this.#nextCall++;
    const frame = JSON.stringify({ ...fields, id });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.#settle(id, null, new RPCError(
        "timeout", `no reply within ${timeoutMs} ms; the call may have run`)), timeoutMs);
      const settle = (result, error) => {
        clearTimeout(timer);
        if (error) reject(error); else resolve(result);
      };
      const call = { ws: null, frame, settle };
      this.#calls.set(id, call);
      if (this.#state === "open") this.#sendCall(call);
    });
  }

  #sendCall(call) {
    call.ws = this.#ws;
    call.ws.send(call.frame);
  }

  #settle(id, result, error) {
    const call = this.#calls.get(id);
    if (!call) return;
    this.#calls.delete(id);
    call.settle(result, error);
  }

  #reply(ws, frame) {
    const call = this.#calls.get(frame.id);
    if (!call || call.ws !== ws) return;  // timed out already, or not sent on this socket
    const { error } = frame;
    if (error === undefined || error === null) {
      this.#settle(frame.id, frame.result ?? null, null);
      return;
    }
    const code = typeof error?.code === "string" && error.code ? error.code : "bad_reply";
    const message = typeof error?.message === "string" ? error.message : "";
    this.#settle(frame.id, null, new RPCError(code, message, error?.data ?? null));
  }

  /** A socket closed: its calls get no reply; with `forGood`, neither do unsent ones. */
  #failCalls(ws, forGood) {
    for (const [id, call] of [...this.#calls]) {
      if (call.ws !== null && call.ws === ws) {
        this.#settle(id, null, new RPCError(
          "disconnected", "the connection closed before the reply; the call may have run"));
      } else if (forGood) {
        this.#settle(id, null, call.ws === null
          ? new RPCError("closed", "the connection closed for good; the call was not sent")
          : new RPCError("disconnected", "the connection closed before the reply"));
      }
    }
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
    this.#openedAt = null;
    if (this.#v2) {
      this.#sentToken = false;  // set when the connect frame carries the reconnect token
      this.#prepare();
      return;
    }
    const url = new URL(this.#url);
    url.searchParams.delete("token");
    url.searchParams.delete("positions");
    this.#sentToken = Boolean(this.#token);
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

  /** v2: claim the device and get a token, then open the socket (no credentials in it). */
  async #prepare() {
    let token;
    try {
      if (this.#device === null) await this.#claimDevice();
      token = await this.#fetchToken();
    } catch (err) {
      if (this.#state === "closed") return this.#releaseDevice();
      if (err instanceof BadToken) {
        this.#finish({ code: null, reason: err.message });
      } else {  // the next attempt asks again
        console.warn("stabilizer: getToken failed; retrying", err);
        this.#lost(1006, `getToken failed: ${err?.message ?? err}`);
      }
      return;
    }
    if (this.#state === "closed") return this.#releaseDevice();  // closed meanwhile
    const url = new URL(this.#url);
    url.searchParams.delete("token");
    url.searchParams.delete("positions");
    const extra = [].concat(this.#options.protocols ?? []).filter((p) => p !== SUBPROTOCOL);
    const ws = new WebSocket(url, [SUBPROTOCOL, ...extra]);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => this.#greet(ws, token);
    ws.onmessage = (event) => this.#receive(ws, event.data);
    ws.onclose = (event) => this.#closed(ws, event.code, event.reason);
    this.#ws = ws;
  }

  /** v2: the first frame, once the server has chosen stabilizer.v2. */
  #greet(ws, token) {
    if (ws !== this.#ws) return;
    if (ws.protocol !== SUBPROTOCOL) {
      this.#ws = null;
      this.#finish({ code: null, reason: `${this.#url} does not speak stabilizer protocol ` +
                     "v2 (no stabilizer.v2 subprotocol); upgrade it or use protocol 1" });
      ws.close();
      return;
    }
    const frame = { type: "connect", device: this.#device };
    if (token) frame.token = token;
    if (this.#token) {
      frame.reconnect_token = this.#token;
      this.#sentToken = true;
      if (Object.keys(this.#positions).length) frame.positions = this.#positions;
    }
    if (this.#options.params) frame.params = this.#options.params;
    ws.send(JSON.stringify(frame));
  }

  async #fetchToken() {
    const { getToken } = this.#options;
    const token = getToken ? await getToken() : null;
    if (token === null || token === undefined) return null;
    if (typeof token !== "string" || !token) {
      throw new BadToken(`stabilizer: getToken must give a non-empty string or null, ` +
                         `got ${typeof token}`);
    }
    return token;
  }

  /** v2: the device and token this tab used before (a reload), unless another tab holds
   * them (a duplicated tab copies sessionStorage); else a new device. */
  async #claimDevice() {
    const where = new URL(this.#url);
    const key = `stabilizer.v2 ${where.origin}${where.pathname}`;
    const saved = readStored(key);
    const mine = saved && DEVICE.test(saved.device) && !HELD.has(saved.device)
      && await hold(saved.device);
    if (mine) {
      this.#device = saved.device;
      if (!this.#token && typeof saved.token === "string") this.#token = saved.token;
    } else {
      this.#device = newDevice();
      await hold(this.#device);
    }
    this.#claimed = true;
    // another connection of this page owns the stored slot: leave it to that one
    this.#storeKey = saved && HELD.has(saved.device) && !mine ? null : key;
    this.#save();
  }

  #save() {
    if (!this.#storeKey) return;
    try {
      sessionStorage.setItem(this.#storeKey,
                             JSON.stringify({ device: this.#device, token: this.#token }));
    } catch {  // storage disabled or full: the session just does not survive a reload
    }
  }

  /** v2: answer the server's refresh request with a fresh token. */
  async #refresh(ws) {
    if (this.#refreshing) return;
    this.#refreshing = true;
    try {
      const token = await this.#fetchToken();
      if (!token) {
        console.warn("stabilizer: getToken gave no token to refresh the credentials with");
      } else if (ws === this.#ws && ws.readyState === WebSocket.OPEN) {
        ws.send(JSON.stringify({ type: "refresh", token }));
      }
    } catch (err) {  // nothing sent: the server closes with 4003, the reconnect asks again
      console.warn("stabilizer: getToken failed while refreshing the credentials", err);
    } finally {
      this.#refreshing = false;
    }
  }

  #receive(ws, data) {
    if (ws !== this.#ws) return;
    this.#lastSeen = Date.now();
    this.#probing = false;
    const text = typeof data === "string";
    const frame = text ? (this.#v2 ? v2Frame(data) : controlFrame(data)) : null;
    if (this.#v2 && text && frame === null) {
      console.warn("stabilizer: dropped a text frame that is not a v2 frame");
      return;
    }
    switch (frame?.type) {
      case "ping": ws.send(this.#v2 ? '{"type":"pong"}' : "pong"); return;
      case "pong": return;
      case "session": this.#welcome(frame); return;
      case "resume": this.#emit("resume", frame); return;
      case "error": this.#emit("error", frame); return;
      case "refresh": this.#refresh(ws); return;
      case "refreshed": this.#expiresAt = numberOrNull(frame.expires_at); return;
      case "reply": if (this.#v2) { this.#reply(ws, frame); return; } break;
      case "message":
        if (this.#history && this.#unwrap(frame)) return;
        if (this.#v2) {
          this.#deliverData(frame);
          return;
        }
        break;
      default:
        if (this.#v2 && frame) return;  // a frame type from a later server
    }
    this.#deliver(data, null);
  }

  /** v2 without history: a message frame's data (or data_b64), to its channel's
   * subscription when it has one. */
  #deliverData(frame) {
    let data = frame.data;
    try {
      if (typeof data !== "string") data = fromBase64(frame.data_b64);
    } catch {
      console.warn("stabilizer: dropped a message frame without valid data");
      return;
    }
    this.#deliver(data, null, typeof frame.channel === "string" ? frame.channel : null);
    this.#acknowledge(frame);
  }

  /** v2: a message frame that asks for it is acknowledged once its listeners returned. */
  #acknowledge(frame) {
    const ws = this.#ws;
    if (this.#v2 && typeof frame.ack === "string" && ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "ack", id: frame.ack }));
    }
  }

  #welcome(frame) {
    this.#session = frame;
    this.#history = frame.history === true;
    this.#token = frame.token ?? null;
    if (this.#v2) {
      this.#expiresAt = numberOrNull(frame.expires_at);
      if (typeof frame.device === "string" && frame.device) this.#device = frame.device;
      this.#save();
    }
    if (!frame.resumed) this.#positions = {};
    const reconnect = this.#everOpened;
    this.#emit("session", frame);
    this.#becomeOpen();
    if (reconnect && !(frame.resumed && this.#history)) {  // no resume frame will come
      this.#emit("resume", { type: "resume", recovered: false, replayed: 0, failed: [] });
    }
    const kept = frame.resumed && this.#history;  // groups end with a session w/o history
    if (reconnect && !kept && this.#channels.size) this.#subscribeAgain();
  }

  #becomeOpen() {
    if (this.#state === "open" || this.#state === "closed") return;
    this.#openedAt = Date.now();
    this.#everOpened = true;
    this.#unopened = 0;
    for (const frame of this.#queue.splice(0)) this.#ws.send(frame);
    for (const call of this.#calls.values()) if (call.ws === null) this.#sendCall(call);
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
      if (seen && seen[1] === epoch && offset <= seen[0]) {  // a duplicate: handled already
        this.#acknowledge(frame);
        return true;
      }
      this.#positions[stream] = [offset, epoch];
    }  // else the server could not sequence it (its store was down): deliver, record nothing
    this.#deliver(data, { stream, offset: offset ?? null, epoch: epoch ?? null },
                  stream.startsWith("g:") ? stream.slice(2) : null);
    this.#acknowledge(frame);
    return true;
  }

  #deliver(data, position, channel = null) {
    this.#becomeOpen();  // a server that sends no session frame is open on its first frame
    const onMessage = channel === null ? null : this.#channels.get(channel)?.onMessage;
    if (!onMessage) {
      this.#emit("message", data, position);
      return;
    }
    try {
      onMessage(data, position);
    } catch (err) {
      queueMicrotask(() => { throw err; });  // report it, keep the connection going
    }
  }

  #closed(ws, code, reason) {
    if (ws !== this.#ws) return;
    this.#ws = null;
    this.#failCalls(ws, false);
    this.#lost(code, reason);
  }

  /** Decide from the close code what comes next: a retry (when), or the end. */
  #lost(code, reason) {
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
    this.#failCalls(null, true);
    this.#releaseDevice();
    this.#setState("closed", info);
  }

  #releaseDevice() {
    if (this.#claimed) release(this.#device);
    this.#claimed = false;
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

class BadToken extends TypeError {}

function checkOptions(options) {
  const { protocol, getToken, device, params } = options;
  if (protocol !== 1 && protocol !== 2) {
    throw new TypeError(`stabilizer: protocol must be 1 or 2, got ${protocol}`);
  }
  if (protocol === 1 && (getToken || device || params)) {
    throw new TypeError("stabilizer: getToken, device and params need protocol: 2");
  }
  if (getToken && typeof getToken !== "function") {
    throw new TypeError("stabilizer: getToken must be a function");
  }
  if (device && !DEVICE.test(device)) {
    throw new TypeError(`stabilizer: device must be 1-64 characters of A-Z a-z 0-9 . _ ~ -`);
  }
}

/** Hold a Web Lock named after `device` while this page uses it; false when another page
 * (a duplicated tab) holds it. Without Web Locks (insecure contexts) only this page counts. */
function hold(device) {
  HELD.set(device, () => {});
  const locks = globalThis.navigator?.locks;
  if (!locks) return Promise.resolve(true);
  return new Promise((resolve) => {
    locks.request(`stabilizer.device ${device}`, { ifAvailable: true }, (lock) => {
      if (!lock) {
        HELD.delete(device);
        resolve(false);
        return undefined;
      }
      resolve(true);
      return new Promise((done) => HELD.set(device, done));  // held until release()
    }).catch(() => resolve(true));  // no lock to be had: go on without
  });
}

function release(device) {
  HELD.get(device)?.();
  HELD.delete(device);
}

function readStored(key) {
  try {
    const value = JSON.parse(sessionStorage.getItem(key));
    return value && typeof value === "object" ? value : null;
  } catch {
    return null;
  }
}

function newDevice() {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function numberOrNull(value) {
  return Number.isFinite(value) ? value : null;
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

/** A v2 server text frame: a JSON object with a string type, else null. */
function v2Frame(text) {
  try {
    const value = JSON.parse(text);
    return value && typeof value === "object" && typeof value.type === "string" ? value : null;
  } catch {
    return null;
  }
}

/** The delay a 1012/1013/4004 close reason asks for, in ms, or null for free text. */
function retryAdvice(reason) {
  try {
    const ms = JSON.parse(reason)?.retry_ms;
    return Number.isFinite(ms) && ms >= 0 ? ms : null;
  } catch {
    return null;
  }
}

function fromBase64(text) {
  if (typeof text !== "string") throw new TypeError("stabilizer: no base64 text");
  return Uint8Array.from(atob(text), (char) => char.charCodeAt(0)).buffer;
}

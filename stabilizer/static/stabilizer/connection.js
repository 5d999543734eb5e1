/**
 * stabilizer/connection.js: Connection, one browser connection to a stabilizer server from
 * its first attempt to its end: opening (protocol 1 or 2), the session, the frames it
 * receives, positions, reconnecting with backoff, the silent-link watchdog. Documented in
 * stabilizer.js, which exports it.
 */

import { Calls, RPCError } from "./calls.js";
import { Channels } from "./channels.js";
import { BadToken, Refresher, fetchToken } from "./credentials.js";
import { DeviceSlot } from "./device.js";
import { Listeners, callSafely } from "./events.js";
import {
  SUBPROTOCOL, TOKEN_CODES, advance, connectFrame, controlFrame, forget, frameLimit, fromBase64,
  malformed, numberOrNull, outgoingFrame, reconnects, retryDelay, socketUrl, v2Frame, webSocketUrl,
} from "./frames.js";
import { DEFAULTS, checkOptions } from "./options.js";
import { later } from "./timers.js";
import { Watchdog } from "./watchdog.js";

export class Connection {
  #url; #options; #ws = null; #state = "connecting"; #session = null; #token; #resuming = false;
  #positions = {}; #history = false; #queue = []; #listeners = new Listeners();
  #failures = 0; #unopened = 0; #sentToken = false; #openedAt = null; #everOpened = false;
  #retryTimer = null; #v2; #device; #expiresAt = null; #refresher;
  #maxMessageSize = null;  // v2: the server's limit on a frame it reads (its session frame)
  #channels = new Channels((body, timeoutMs) => this.#request(body, timeoutMs),
                           (channel) => forget(this.#positions, `g:${channel}`),
                           (failures) => (failures >= this.#options.maxAttempts ? null
                             : retryDelay(null, "", failures, this.#options)));
  #calls = new Calls(() => (this.#state === "open" ? this.#ws : null));
  #watchdog = new Watchdog(() => ({
    ws: this.#ws, probeTimeoutMs: this.#options.probeTimeoutMs,
    intervalMs: Number(this.#session?.heartbeat_interval) * 1500,  // pings are due by then
  }), (ws, reason) => {
    this.#closed(ws, 1006, reason);  // the link is dead: do not wait for it
    ws.close();
  });

  constructor(url, options = {}) {
    this.#url = webSocketUrl(url);
    this.#options = { ...DEFAULTS, ...options };
    checkOptions(this.#options);
    this.#v2 = this.#options.protocol === 2;
    this.#device = new DeviceSlot(this.#options.device || null);
    this.#token = this.#options.token || null;
    this.#refresher = new Refresher(this.#options.getToken);
    this.#open();
  }

  get state() { return this.#state; }
  get session() { return this.#session; }
  get token() { return this.#token; }
  get positions() { return structuredClone(this.#positions); }
  get protocol() { return this.#v2 ? 2 : 1; }
  get clientId() { return this.#session?.client_id ?? null; }
  get userId() { return this.#session?.user_id ?? null; }
  get device() { return this.#device.id; }
  get expiresAt() { return this.#expiresAt; }

  /** Call `fn` on `event`; return a function that removes it. */
  on(event, fn) {
    this.#listeners.add(event, fn);
    return () => this.off(event, fn);
  }

  /** Stop calling `fn` on `event`. */
  off(event, fn) {
    this.#listeners.delete(event, fn);
  }

  /** Send now when open (true), queue while (re)connecting (false); throw when closed. */
  send(data) {
    if (this.#state === "closed") {
      throw new Error("stabilizer: the connection is closed for good; call connect() again");
    }
    const frame = outgoingFrame(data, this.#v2);
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

  /** v2: call the server's procedure `method`; a Promise of its result (see stabilizer.js). */
  rpc(method, params = null, { timeoutMs = 30000 } = {}) {
    const body = { type: "rpc", method };
    if (params !== null && params !== undefined) body.params = params;
    return this.#request(body, timeoutMs);
  }

  /** v2: join `channel` if the server's on_subscribe hook allows it; `onMessage(data,
   * position)` then gets its messages instead of the "message" listeners. With `presence`,
   * `presence(channel)` then follows who is in it. When the server ends the subscription
   * itself, the client forgets it, calls `onUnsubscribed(reason)` and emits "unsubscribed". */
  subscribe(channel, onMessage = null, options = {}) {
    return this.#channels.subscribe(channel, onMessage, options);
  }

  /** v2: the presence of a channel subscribed with `presence: true` (else null). */
  presence(channel) { return this.#channels.presence(channel); }

  /** v2: leave `channel`. */
  unsubscribe(channel, { timeoutMs = 30000 } = {}) {
    return this.#channels.unsubscribe(channel, timeoutMs);
  }

  /** v2: send `data` (a string, or an object or array sent as JSON) to `channel`'s members
   * if the server's on_publish hook allows it. */
  async publish(channel, data, { timeoutMs = 30000 } = {}) {
    await this.#request({ type: "publish", channel, data }, timeoutMs);
  }

  #request(fields, timeoutMs) {
    if (!this.#v2) {
      return Promise.reject(new TypeError(`stabilizer: ${fields.type} needs protocol: 2`));
    }
    if (this.#state === "closed") {
      return Promise.reject(new RPCError("closed", "the connection is closed for good"));
    }
    return this.#calls.start(fields, timeoutMs);
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
    const url = socketUrl(this.#url, this.#token, this.#positions);
    this.#sentToken = Boolean(this.#token);
    const ws = new WebSocket(url, this.#options.protocols);
    ws.binaryType = "arraybuffer";
    ws.onmessage = (event) => this.#receive(ws, event.data);
    ws.onclose = (event) => this.#closed(ws, event.code, event.reason);
    this.#ws = ws;
    this.#watchdog.opening(ws, this.#options.connectTimeoutMs);
  }

  /** v2: claim the device and get a token, then open the socket (no credentials in it). */
  async #prepare() {
    let token;
    try {
      if (this.#device.id === null) {
        await this.#device.claim(this.#url, this.#token, (saved) => { this.#token = saved; });
      }
      token = await fetchToken(this.#options.getToken);
    } catch (err) {
      if (this.#state === "closed") return this.#device.release();
      if (err instanceof BadToken) {
        this.#finish({ code: null, reason: err.message });
      } else {  // the next attempt asks again
        console.warn("stabilizer: getToken failed; retrying", err);
        this.#lost(1006, `getToken failed: ${err?.message ?? err}`);
      }
      return;
    }
    if (this.#state === "closed") return this.#device.release();  // closed meanwhile
    const url = socketUrl(this.#url);
    const extra = [].concat(this.#options.protocols ?? []).filter((p) => p !== SUBPROTOCOL);
    const ws = new WebSocket(url, [SUBPROTOCOL, ...extra]);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => this.#greet(ws, token);
    ws.onmessage = (event) => this.#receive(ws, event.data);
    ws.onclose = (event) => this.#closed(ws, event.code, event.reason);
    this.#ws = ws;
    this.#watchdog.opening(ws, this.#options.connectTimeoutMs);
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
    if (this.#token) this.#sentToken = true;
    ws.send(JSON.stringify(connectFrame(this.#device.id, token, this.#token, this.#positions,
                                        this.#options.params, this.#channels.names,
                                        this.#maxMessageSize)));
  }

  #receive(ws, data) {
    if (ws !== this.#ws) return;
    this.#watchdog.heard();
    const text = typeof data === "string";
    const frame = text ? (this.#v2 ? v2Frame(data) : controlFrame(data)) : null;
    if (this.#v2 && text && frame === null) {
      console.warn("stabilizer: dropped a text frame that is not a v2 frame");
      return;
    }
    const problem = frame === null ? null : malformed(frame);
    if (problem !== null) {
      console.warn(`stabilizer: dropped ${problem}`);
      return;
    }
    switch (frame?.type) {
      case "ping": ws.send(this.#v2 ? '{"type":"pong"}' : "pong"); return;
      case "pong": return;
      case "session": this.#welcome(frame); return;
      case "resume":
        // a reconnect's (leaves made meanwhile were told before it; fresh: memberships gone)
        if (this.#resuming) this.#channels.subscribeAgain(frame.fresh !== true);
        this.#resuming = false;
        this.#emit("resume", frame);
        return;
      case "error": this.#emit("error", frame); return;
      case "refresh": this.#refresher.refresh(ws, () => this.#ws); return;
      case "refreshed": this.#expiresAt = numberOrNull(frame.expires_at); return;
      case "reply": if (this.#v2) { this.#calls.reply(ws, frame); return; } break;
      case "presence_state": case "presence_diff":
        if (this.#v2) { this.#channels.presenceFrame(frame); return; } break;
      case "unsubscribed":
        if (!this.#v2) break;
        delete this.#positions[`g:${frame.channel}`];
        this.#channels.ended(frame);
        this.#emit("unsubscribed", frame);
        return;
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
      this.#maxMessageSize = frameLimit(frame.max_message_size);  // (a resume fits under it)
      if (typeof frame.device === "string" && frame.device) this.#device.id = frame.device;
      this.#device.save(this.#token);
    }
    if (!frame.resumed) this.#positions = {};
    const reconnect = this.#everOpened;
    this.#emit("session", frame);
    this.#becomeOpen();
    this.#resuming = reconnect && frame.resumed && this.#history;  // a resume frame comes
    if (reconnect && !this.#resuming) {  // none will come, and no group was kept
      this.#emit("resume", { type: "resume", recovered: false, replayed: 0, failed: [] });
      this.#channels.subscribeAgain(false);
    }
  }

  #becomeOpen() {
    if (this.#state === "open" || this.#state === "closed") return;
    this.#openedAt = Date.now();
    this.#everOpened = true;
    this.#unopened = 0;
    for (const frame of this.#queue.splice(0)) this.#ws.send(frame);
    this.#calls.sendUnsent(this.#ws);
    this.#setState("open", null);
    this.#watchdog.watch();
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
    const channel = stream.startsWith("g:") ? stream.slice(2) : null;
    if ((channel === null || this.#channels.records(channel))  // (not one left meanwhile)
        && !advance(this.#positions, stream, offset, epoch)) {  // a duplicate: handled already
      this.#acknowledge(frame);
      return true;
    }
    this.#deliver(data, { stream, offset: offset ?? null, epoch: epoch ?? null }, channel);
    this.#acknowledge(frame);
    return true;
  }

  #deliver(data, position, channel = null) {
    this.#becomeOpen();  // a server that sends no session frame is open on its first frame
    const onMessage = this.#channels.handler(channel);
    if (!onMessage) {
      this.#emit("message", data, position);
      return;
    }
    callSafely(onMessage, data, position);
  }

  #closed(ws, code, reason) {
    if (ws !== this.#ws) return;
    this.#ws = null;
    this.#channels.interrupt();  // (a round of subscribing again ends with its socket)
    this.#calls.fail(ws, false);
    this.#lost(code, reason);
  }

  /** Decide from the close code what comes next: a retry (when), or the end. */
  #lost(code, reason) {
    this.#watchdog.stop();
    const info = { code, reason };
    const options = this.#options;
    const stable = this.#openedAt !== null && Date.now() - this.#openedAt >= options.stableAfterMs;
    this.#failures = stable ? 0 : this.#failures + 1;
    if (this.#openedAt === null) this.#unopened += 1;
    if (TOKEN_CODES.has(code) && this.#sentToken) {
      this.#token = null;  // rejected: one fresh session without it
      this.#positions = {};
      this.#retry(0, info);
    } else if (!reconnects(code)) {
      this.#finish(info);
    } else if (this.#unopened >= options.maxAttempts) {
      this.#finish({ ...info, reason: `${this.#unopened} attempts in a row failed: ${reason}` });
    } else {
      this.#retry(retryDelay(code, reason, this.#failures, options), info);
    }
  }

  #retry(delayMs, info) {
    const state = this.#everOpened ? "reconnecting" : "connecting";
    this.#setState(state, { ...info, delay_ms: Math.round(delayMs) });
    this.#retryTimer = later(() => this.#open(), delayMs);
  }

  #finish(info) {
    clearTimeout(this.#retryTimer);
    this.#watchdog.stop();
    this.#queue = [];
    this.#channels.interrupt();
    this.#calls.fail(null, true);
    this.#device.release();
    this.#setState("closed", info);
  }

  #setState(state, info) {
    if (state === this.#state) return;
    this.#state = state;
    this.#emit("state", state, info);
  }

  #emit(event, ...args) {
    this.#listeners.emit(event, ...args);
  }
}

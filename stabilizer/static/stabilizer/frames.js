/**
 * stabilizer/frames.js: the wire, pure: which text frames are protocol frames, what a close
 * code and its reason ask for, base64 data, the URLs a connection opens. No state, no I/O.
 */

import { MAX_TIMER_MS } from "./timers.js";

export const SUBPROTOCOL = "stabilizer.v2";
export const TOKEN_CODES = new Set([4501, 4502]);
const RETRY_CODES = new Set([1001, 1005, 1006, 1011, 1012, 1013, 1014]);
const ADVICE_CODES = new Set([1012, 1013, 4004]);
const CONTROL_TYPES = new Set(["session", "ping", "pong", "resume", "error", "message"]);
// the most positions a resume sends: a server refuses more with a final 1008
const MAX_RESUME_STREAMS = 1000;
const MAX_RESUME_TEXT = 64 * 1024 - 1024;  // (positions and channels together: bytes)
const MAX_HELD_CHANNELS = 1000;  // the most channels a resume names (as the server takes)
// protocol 1: the longest path and query (percent-encoded) a URL with ?positions= may have.
// Servers commonly read handshake lines of at most 8 KiB (uvicorn never answers a longer one)
const MAX_RESUME_URL = 6 * 1024;
const encoder = new TextEncoder();

/** The protocol frame in `text`, or null when it is an application message. */
export function controlFrame(text) {
  if (!text.startsWith("{") || !text.includes('"type"')) return null;
  try {
    const value = JSON.parse(text);
    return value && CONTROL_TYPES.has(value.type) ? value : null;
  } catch {
    return null;
  }
}

/** A v2 server text frame: a JSON object with a string type, else null. */
export function v2Frame(text) {
  try {
    const value = JSON.parse(text);
    return value && typeof value === "object" && typeof value.type === "string" ? value : null;
  } catch {
    return null;
  }
}

/** Why the client cannot act on the protocol frame `frame` (a field it reads is missing or
 * of the wrong type), or null when it can: dropped with a warning, as a text frame that is
 * no frame at all. */
export function malformed(frame) {
  switch (frame.type) {
    case "resume":
      return typeof frame.recovered === "boolean" && Number.isInteger(frame.replayed)
        && frame.replayed >= 0 && Array.isArray(frame.failed)
        && frame.failed.every((stream) => typeof stream === "string")
        ? null : "a resume frame without recovered, replayed and failed";
    case "unsubscribed":
      return typeof frame.channel === "string" ? null
        : "an unsubscribed frame without a channel";
    default:
      return null;
  }
}

/** What send(data) writes: binary data as it is; text, and anything else as JSON, wrapped in
 * a message frame in v2. */
export function outgoingFrame(data, v2) {
  const binary = data instanceof ArrayBuffer || ArrayBuffer.isView(data) || data instanceof Blob;
  const frame = typeof data === "string" || binary ? data : JSON.stringify(data);
  return v2 && !binary ? JSON.stringify({ type: "message", data: frame }) : frame;
}

/** Record a history message at `offset` of `epoch` on `stream` in `positions` ({stream:
 * [offset, epoch]}); false when it is a duplicate, one handled already. */
export function advance(positions, stream, offset, epoch) {
  if (!Number.isInteger(offset) || typeof epoch !== "string") {
    return true;  // the server could not sequence it (its store was down): record nothing
  }
  const seen = positions[stream];
  if (seen && seen[1] === epoch && offset <= seen[0]) return false;
  positions[stream] = [offset, epoch];
  return true;
}

/** The v2 connect frame: the device, the access token, the reconnect token with the
 * positions to resume from and the channels held (the server tells which of them it ended
 * meanwhile), and the authenticator's params (each only when there is one). Positions and
 * channels take at most MAX_RESUME_TEXT bytes together (as positions alone may) and, with
 * `maxSize` (the max_message_size of the server's last session frame), no more than the rest
 * of the frame leaves under it. Positions go whole or not at all: without them the server
 * replays from the session's start (and advance() drops what the client had). A channel
 * whose g: position is sent is not named (the server counts it as held); the others are
 * named while they fit. One left out is not told a leave made while away: its notice is
 * lost, it stays subscribed, and into a kept session one that follows presence is
 * subscribed (joined) again. */
export function connectFrame(device, token, reconnectToken, positions, params, channels = [],
                             maxSize = null) {
  const frame = { type: "connect", device };
  if (token) frame.token = token;
  if (reconnectToken) {
    frame.reconnect_token = reconnectToken;
    let room = resumeRoom(params ? { ...frame, params } : frame, maxSize);
    let sent = {};
    if (sendable(positions) && byteSize(positions) <= room) {
      frame.positions = sent = positions;
      room -= byteSize(positions);
    }
    const named = heldChannels(channels.filter((channel) => !Object.hasOwn(sent, `g:${channel}`)),
                               room);
    if (named.length) frame.channels = named;
  }
  if (params) frame.params = params;
  return frame;
}

/** The bytes a resume's positions and channels may take together in a connect frame whose
 * other fields are `frame`: MAX_RESUME_TEXT, or less when the server reads frames of at most
 * `maxSize` bytes (UTF-8), less what the rest of the frame takes there. */
function resumeRoom(frame, maxSize) {
  if (maxSize === null) return MAX_RESUME_TEXT;
  // (the frame with both fields empty, "{}" and "[]", is the rest and their keys)
  const rest = byteSize({ ...frame, positions: {}, channels: [] }) - "{}[]".length;
  return Math.min(MAX_RESUME_TEXT, maxSize - rest);
}

/** The max_message_size of a session frame: a positive integer, else null (not stated, by
 * an older server, or not a limit at all). */
export function frameLimit(value) {
  return Number.isSafeInteger(value) && value > 0 ? value : null;
}

/** The first of `channels` (at most MAX_HELD_CHANNELS) whose names fit `room` bytes of a
 * frame's JSON text (UTF-8). */
export function heldChannels(channels, room) {
  const named = channels.slice(0, MAX_HELD_CHANNELS);
  let used = 2;  // []
  for (let count = 0; count < named.length; count += 1) {
    used += byteSize(named[count]) + 1;  // (and a comma)
    if (used > room) return named.slice(0, count);
  }
  return named;
}

function byteSize(value) {  // in a frame, as a server's max_message_size counts it (UTF-8)
  return encoder.encode(JSON.stringify(value)).length;
}

/** Whether `positions` go with a resume: some, and not over what a server takes (more
 * would be refused for good; without them the server replays from where the session
 * began, and advance() drops what the client had already). */
export function sendable(positions) {
  const count = Object.keys(positions).length;
  return count > 0 && count <= MAX_RESUME_STREAMS && byteSize(positions) <= MAX_RESUME_TEXT;
}

/** Drop the position of `stream` from `positions`: a function that records it again
 * (unless one was recorded since), for a leave that failed while the channel is held. */
export function forget(positions, stream) {
  const last = positions[stream];
  delete positions[stream];
  return () => { if (last && !Object.hasOwn(positions, stream)) positions[stream] = last; };
}

/** Whether a socket closed with `code` is opened again (else the connection ends). */
export function reconnects(code) {
  return RETRY_CODES.has(code) || (code >= 4000 && code <= 4499);
}

/** The ms to wait before reconnecting after `failures` failures in a row: the advice of a
 * 1012/1013/4004 close reason (at most maxAdviceMs), else the full-jitter backoff. Advice
 * is followed alone once; when the advised attempt fails too, the backoff goes on under
 * it (the longer of the two), so advice of 0 never makes a tight loop. Never more than a
 * timer can wait (MAX_TIMER_MS: a longer one would fire at once). */
export function retryDelay(code, reason, failures, options) {
  const ceiling = Math.min(options.backoffCapMs,
                           options.backoffBaseMs * 2 ** Math.min(failures, 30));
  const backoff = Math.random() * ceiling;
  const advice = ADVICE_CODES.has(code) ? retryAdvice(reason) : null;
  let delay = backoff;
  if (advice !== null) {
    const advised = Math.min(advice, options.maxAdviceMs);
    delay = failures <= 1 ? advised : Math.max(advised, backoff);
  }
  return Math.min(delay, MAX_TIMER_MS);
}

/** The delay a 1012/1013/4004 close reason asks for, in ms, or null for free text. */
export function retryAdvice(reason) {
  try {
    const ms = JSON.parse(reason)?.retry_ms;
    return Number.isFinite(ms) && ms >= 0 ? ms : null;
  } catch {
    return null;
  }
}

export function fromBase64(text) {
  if (typeof text !== "string") throw new TypeError("stabilizer: no base64 text");
  return Uint8Array.from(atob(text), (char) => char.charCodeAt(0)).buffer;
}

export function numberOrNull(value) {
  return Number.isFinite(value) ? value : null;
}

/** `url` (ws:, wss:, http:, https: or relative) as the ws: or wss: URL to connect to. */
export function webSocketUrl(url) {
  const parsed = new URL(url, globalThis.location?.href);
  parsed.protocol = parsed.protocol.replace(/^http/, "ws");  // http: -> ws:, https: -> wss:
  if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
    throw new SyntaxError(`stabilizer: ${url} is not a ws:, wss:, http: or https: URL`);
  }
  parsed.hash = "";
  return parsed.href;
}

/** `base` without token and positions parameters; with `token`, protocol 1's resume
 * parameters: ?token= and ?positions= when there are any and the URL's path and query stay
 * within MAX_RESUME_URL with them. Without them the server replays from where the session
 * began, and advance() drops what the client had already. */
export function socketUrl(base, token = null, positions = {}) {
  const url = new URL(base);
  url.searchParams.delete("token");
  url.searchParams.delete("positions");
  if (token) {
    url.searchParams.set("token", token);
    if (sendable(positions)) {
      url.searchParams.set("positions", JSON.stringify(positions));
      if (url.pathname.length + url.search.length > MAX_RESUME_URL) {
        url.searchParams.delete("positions");
      }
    }
  }
  return url;
}

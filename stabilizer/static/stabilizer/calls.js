/**
 * stabilizer/calls.js: protocol v2's requests that await a reply (rpc, subscribe,
 * unsubscribe, publish): their ids, their timeouts, sending each at most once, and settling
 * each exactly once, by its reply, a timeout or a close; RPCError, what they reject with.
 */

import { checkWait } from "./options.js";
import { later } from "./timers.js";

/** A remote procedure call that returned no value: the server's error, or the client's
 * "timeout", "disconnected" or "closed" (see rpc in stabilizer.js). */
export class RPCError extends Error {
  constructor(code, message = "", data = null) {
    super(message ? `${code}: ${message}` : code);
    this.name = "RPCError";
    this.code = code;
    this.detail = message;  // the server's message alone (`message` leads with the code)
    this.data = data;
  }
}

/** One connection's calls awaiting a reply. */
export class Calls {
  #calls = new Map(); #nextCall = 1;  // call id -> {ws (null until sent), frame, settle}
  #openSocket;  // () => the socket to send on now, or null while not open

  constructor(openSocket) {
    this.#openSocket = openSocket;
  }

  /** Send `fields` (a request frame without its id) now when open, else once open; a
   * Promise of the reply's result, rejected with "timeout" after `timeoutMs` (Infinity:
   * never), or at once with a TypeError, unsent, when that is no such number. */
  start(fields, timeoutMs) {
    try {
      checkWait("timeoutMs", timeoutMs);
    } catch (err) {
      return Promise.reject(err);
    }
    const id = this.#nextCall++;
    const frame = JSON.stringify({ ...fields, id });
    return new Promise((resolve, reject) => {
      const timer = later(() => this.#settle(id, null, new RPCError(
        "timeout", `no reply within ${timeoutMs} ms; the call may have run`)), timeoutMs);
      const settle = (result, error) => {
        clearTimeout(timer);
        if (error) reject(error); else resolve(result);
      };
      const call = { ws: null, frame, settle };
      this.#calls.set(id, call);
      const ws = this.#openSocket();
      if (ws) send(call, ws);
    });
  }

  /** The connection opened on `ws`: send the calls made while it was not open. */
  sendUnsent(ws) {
    for (const call of this.#calls.values()) if (call.ws === null) send(call, ws);
  }

  /** Settle the call a reply frame that came on `ws` answers. */
  reply(ws, frame) {
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
  fail(ws, forGood) {
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

  #settle(id, result, error) {
    const call = this.#calls.get(id);
    if (!call) return;
    this.#calls.delete(id);
    call.settle(result, error);
  }
}

function send(call, ws) {
  call.ws = ws;
  call.ws.send(call.frame);
}

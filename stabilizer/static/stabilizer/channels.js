/**
 * stabilizer/channels.js: protocol v2's channel subscriptions as the client keeps them: the
 * function that gets each channel's messages, the presence it follows, and subscribing
 * again after a reconnect into a session that kept no memberships (or, for those that
 * follow presence, after any reconnect, once its resume frame came). A channel the server
 * ends itself (an "unsubscribed" frame, also for a leave made while the client was away)
 * or refuses when subscribed again is forgotten, and its onUnsubscribed told.
 */
import { Presence } from "./presence.js";

/** A subscribe request (without its id). */
export function subscribeFrame(channel, params, presence = false) {
  const body = { type: "subscribe", channel };
  if (params !== null && params !== undefined) body.params = params;
  if (presence) body.presence = true;
  return body;
}

// errors after which a subscribe changed nothing (the server keeps a membership it had)
const KEPT_ON = new Set(["timeout", "disconnected", "unavailable", "closed", "rate_limited",
                         "overloaded"]);

function tell(onUnsubscribed, channel, reason) {
  if (!onUnsubscribed) return;
  try {
    onUnsubscribed(reason);
  } catch (err) {  // the application's bug must not end the connection
    console.error(`stabilizer: onUnsubscribed of channel ${channel} failed`, err);
  }
}

/** One connection's subscribed channels: `request(body, timeoutMs)` sends their requests,
 * `forgetPosition(channel)` drops the position of a channel left (and returns a function
 * that records it again). */
export class Channels {
  #request; #forgetPosition;
  #channels = new Map();  // subscribed channel -> {onMessage, params}
  #presences = new Map();  // channel -> Presence, for those that follow it
  // The server takes a channel's requests in the order sent, so a subscribe answered after
  // an unsubscribe sent later is undone by it: each request gets a number, and the last
  // unsubscribe's is kept while subscribes of its channel are in flight.
  #numbers = 0;
  #subscribing = new Map();  // channel -> subscribes in flight
  #left = new Map();  // channel -> the number of its last unsubscribe
  #ended = new Map();  // channel -> [that number, reason] when the server ended it
  #leaving = new Map();  // channel -> the client's own unsubscribes on their way

  constructor(request, forgetPosition) {
    this.#request = request;
    this.#forgetPosition = forgetPosition;
  }

  get size() { return this.#channels.size; }

  /** The subscribed channels, sorted (a resume names them). */
  get names() { return [...this.#channels.keys()].sort(); }

  get followsPresence() { return this.#presences.size > 0; }

  has(channel) { return this.#channels.has(channel); }

  /** Join `channel` (Connection.subscribe). */
  async subscribe(channel, onMessage, { params = null, presence = false, onUnsubscribed = null,
                                        timeoutMs = 30000 } = {}) {
    if (presence) this.presence(channel, true);
    const number = this.subscribing(channel);
    try {
      await this.#request(subscribeFrame(channel, params, presence), timeoutMs);
    } catch (err) {
      this.subscribed(channel, number);
      throw err;
    }
    this.subscribed(channel, number, { onMessage, params, onUnsubscribed });
  }

  /** Leave `channel` (Connection.unsubscribe). */
  unsubscribe(channel, timeoutMs) {
    this.unsubscribing(channel);
    return this.#leave(channel, timeoutMs);
  }

  /** Send an unsubscribe of `channel` and forget its position (a resume carries no stream
   * the client left): a message of it that arrives meanwhile records none (`records`). When
   * it fails and the channel is still subscribed (an automatic leave keeps it), the position
   * is restored: the next resume replays only what came after it. */
  async #leave(channel, timeoutMs) {
    this.#leaving.set(channel, (this.#leaving.get(channel) ?? 0) + 1);
    const restore = this.#forgetPosition(channel);
    try {
      await this.#request({ type: "unsubscribe", channel }, timeoutMs);
    } catch (err) {
      if (this.#channels.has(channel)) restore();
      throw err;
    } finally {
      const still = this.#leaving.get(channel) - 1;
      if (still) this.#leaving.set(channel, still); else this.#leaving.delete(channel);
    }
  }

  /** Whether a message of `channel` records its position (a resume counts a channel whose
   * position it sends as held): not while the client's own unsubscribe of it is on its way
   * (the server sent it before the leave; one after the reply is a new membership's, such
   * as the application's join), unless it subscribes again. */
  records(channel) {
    return !this.#leaving.has(channel) || this.#channels.has(channel)
      || this.#subscribing.has(channel);
  }

  /** A subscribe of `channel` is about to be sent: its number, for `subscribed`. */
  subscribing(channel) {
    this.#subscribing.set(channel, (this.#subscribing.get(channel) ?? 0) + 1);
    return ++this.#numbers;
  }

  /** The subscribe `number` ended: with `entry` ({onMessage, params}) when it succeeded; it
   * counts only when no unsubscribe of its channel was sent after it. */
  subscribed(channel, number, entry = null) {
    const leftAt = this.#left.get(channel) ?? 0;
    const left = leftAt > number;
    const ended = this.#ended.get(channel);
    const still = this.#subscribing.get(channel) - 1;
    if (still) {
      this.#subscribing.set(channel, still);
    } else {
      this.#subscribing.delete(channel);
      this.#left.delete(channel);
      this.#ended.delete(channel);
    }
    if (entry !== null && left && ended?.[0] === leftAt) {
      tell(entry.onUnsubscribed, channel, ended[1]);  // the server undid it at once
    }
    if (entry !== null && !left) {
      this.#channels.set(channel, entry);
    } else if (!this.#channels.has(channel) && !still) {
      this.#presences.delete(channel);  // (the copy its subscribe made)
    }
  }

  /** An unsubscribe of `channel` is about to be sent: forget it, even when a subscribe sent
   * before is answered later. */
  unsubscribing(channel) {
    this.delete(channel);
    if (this.#subscribing.has(channel)) this.#left.set(channel, ++this.#numbers);
  }

  delete(channel) {
    this.#channels.delete(channel);
    this.#presences.delete(channel);
  }

  /** An "unsubscribed" frame: the server ended the subscription of its channel. It counts
   * as an unsubscribe sent now (a subscribe in flight is undone: the server takes the
   * client out only of a channel it was in, so the frame follows a join). */
  ended(frame) {
    const channel = frame.channel;
    if (typeof channel !== "string") return;
    const reason = typeof frame.reason === "string" ? frame.reason : "server";
    const entry = this.#channels.get(channel);
    this.unsubscribing(channel);
    if (this.#subscribing.has(channel)) this.#ended.set(channel, [this.#left.get(channel), reason]);
    tell(entry?.onUnsubscribed, channel, reason);
  }

  /** The presence of `channel`, made on first use (before the subscribe is sent: its
   * state follows the reply at once). */
  presence(channel, create = false) {
    if (create && !this.#presences.has(channel)) this.#presences.set(channel, new Presence(channel));
    return this.#presences.get(channel) ?? null;
  }

  /** A "presence_state" or "presence_diff" frame: to its channel's copy. */
  presenceFrame(frame) {
    this.#presences.get(frame.channel)?.apply(frame);
  }

  /** The function that gets `channel`'s messages instead of the "message" listeners. */
  handler(channel) {
    return channel === null ? null : this.#channels.get(channel)?.onMessage;
  }

  /** After a reconnect into a fresh session the server forgot the subscriptions: send each
   * again (`presenceOnly`, into a kept session: those that follow presence). Forget the ones
   * the server refuses now, telling their onUnsubscribed the refusal's code; into a kept
   * session leave each first (a refusal changes no membership on the server), its messages
   * going to the subscription meanwhile; when that unsubscribe fails, it stays subscribed
   * (the next reconnect asks again). */
  async subscribeAgain(presenceOnly = false) {
    if (presenceOnly && !this.followsPresence) return;
    for (const [channel, entry] of [...this.#channels]) {
      const presence = this.#presences.has(channel);
      if (presenceOnly && !presence) continue;
      if (this.#channels.get(channel) !== entry) continue;  // unsubscribed (or anew) meanwhile
      let refusal;
      try {
        refusal = await this.#askAgain(channel, entry, presence);
        if (refusal && presenceOnly && this.#channels.get(channel) === entry) {
          await this.#leave(channel, 30000);  // the session kept the membership
        }
      } catch (err) {
        console.warn(`stabilizer: channel ${channel} was refused, but not left: ${err.message}`);
        continue;
      }
      if (refusal && this.#channels.get(channel) === entry) {
        this.delete(channel);
        this.#forgetPosition(channel);
        tell(entry.onUnsubscribed, channel, refusal);
      }
    }
  }

  /** Subscribe to `channel` again: the refusal's code, or null (allowed, or nothing
   * changed: KEPT_ON). */
  async #askAgain(channel, entry, presence) {
    try {
      await this.#request(subscribeFrame(channel, entry.params, presence), 30000);
    } catch (err) {
      if (KEPT_ON.has(err.code)) return null;  // nothing changed: the next session tries again
      console.warn(`stabilizer: channel ${channel} was not subscribed again: ${err.message}`);
      return err.code ?? "error";
    }
    if (!this.#channels.has(channel)) {  // unsubscribed while this one was on its way
      await this.#leave(channel, 30000).catch(() => {});  // (a fresh session forgets it)
    }
    return null;
  }
}

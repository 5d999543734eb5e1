/**
 * stabilizer/channels.js: protocol v2's channel subscriptions as the client keeps them: the
 * function that gets each channel's messages, the presence it follows, and subscribing
 * again after a reconnect into a session that kept no memberships (or, for those that
 * follow presence, after any reconnect, once its resume frame came). A channel the server
 * ends itself (an "unsubscribed" frame, also for a leave made while the client was away,
 * or a refusal of a subscribe made again) is forgotten, and its onUnsubscribed told.
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

/** One connection's subscribed channels. */
export class Channels {
  #channels = new Map();  // subscribed channel -> {onMessage, params}
  #presences = new Map();  // channel -> Presence, for those that follow it
  // The server takes a channel's requests in the order sent, so a subscribe answered after
  // an unsubscribe sent later is undone by it: each request gets a number, and the last
  // unsubscribe's is kept while subscribes of its channel are in flight.
  #numbers = 0;
  #subscribing = new Map();  // channel -> subscribes in flight
  #left = new Map();  // channel -> the number of its last unsubscribe
  #ended = new Map();  // channel -> [that number, reason] when the server ended it

  get size() { return this.#channels.size; }

  /** The subscribed channels, sorted (a resume names them). */
  get names() { return [...this.#channels.keys()].sort(); }

  get followsPresence() { return this.#presences.size > 0; }

  has(channel) { return this.#channels.has(channel); }

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
   * again with `request(body, timeoutMs)` (`presenceOnly`, into a kept session: those that
   * follow presence). Forget the ones the server refuses now (it ends a membership the
   * session kept), telling their onUnsubscribed the refusal's code, and `forgotten(channel)`
   * (unless an "unsubscribed" frame told it first). */
  async subscribeAgain(request, presenceOnly = false, forgotten = () => {}) {
    if (presenceOnly && !this.followsPresence) return;
    for (const [channel, entry] of [...this.#channels]) {
      const presence = this.#presences.has(channel);
      if (presenceOnly && !presence) continue;
      if (this.#channels.get(channel) !== entry) continue;  // unsubscribed (or anew) meanwhile
      const body = subscribeFrame(channel, entry.params, presence);
      try {
        await request(body, 30000);
        if (!this.#channels.has(channel)) {  // unsubscribed while this one was on its way
          await request({ type: "unsubscribe", channel }, 30000);
        }
      } catch (err) {
        if (KEPT_ON.has(err.code)) continue;  // nothing changed: the next session tries again
        console.warn(`stabilizer: channel ${channel} was not subscribed again: ${err.message}`);
        if (this.#channels.get(channel) === entry) {
          this.delete(channel);
          forgotten(channel);
          tell(entry.onUnsubscribed, channel, err.code);
        }
      }
    }
  }
}

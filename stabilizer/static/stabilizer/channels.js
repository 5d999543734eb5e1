/**
 * stabilizer/channels.js: protocol v2's channel subscriptions as the client keeps them: the
 * function that gets each channel's messages, the presence it follows, and subscribing
 * again after a reconnect into a session that kept no memberships (or, for those that
 * follow presence, after any reconnect, once its resume frame came). A channel the server
 * ends itself (an "unsubscribed" frame, also for a leave made while the client was away)
 * or refuses when subscribed again is forgotten, and its onUnsubscribed told; one answered
 * "try later" is asked again after the connection's backoff.
 *
 * A channel's messages go to its subscription's onMessage from the moment the subscribe's
 * reply is read (the subscription is recorded in that reply's task, before the next frame
 * is handled) until the reply to the page's unsubscribe is read: the server sent those
 * before the leave. One read after that reply is another membership's (the application's
 * join) and goes to the "message" listeners.
 */
import { Presence } from "./presence.js";

/** A subscribe request (without its id). */
export function subscribeFrame(channel, params, presence = false) {
  const body = { type: "subscribe", channel };
  if (params !== null && params !== undefined) body.params = params;
  if (presence) body.presence = true;
  return body;
}

// answers that say "try later": a subscribe made again changed nothing, and is asked again
// after a backoff; "disconnected" and "closed" (the socket's end) end the round instead
const TRY_LATER = new Set(["unavailable", "overloaded", "rate_limited", "timeout"]);
const LOST = new Set(["disconnected", "closed"]);
const WARN_EVERY_MS = 10000;  // a round's "asking again" warnings: one per interval

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
 * that records it again), `backoff(failures)` is the ms to wait before asking again after
 * that many "try later" answers in a row (null: give up). */
export class Channels {
  #request; #forgetPosition; #backoff;
  #round = 0;  // the current round of subscribing again; a lost socket ends it
  // subscribed channel -> {onMessage, params, presence, onUnsubscribed}; presence: it
  // follows the channel's presence (a subscribe with presence succeeded)
  #channels = new Map();
  #presences = new Map();  // channel -> Presence, for those held that follow it
  // The server takes a channel's requests in the order sent, so a subscribe answered after
  // an unsubscribe sent later is undone by it: each request gets a number, and the last
  // unsubscribe's is kept while subscribes of its channel are in flight.
  #numbers = 0;
  #subscribing = new Map();  // channel -> subscribes in flight
  #left = new Map();  // channel -> the number of its last unsubscribe
  #ended = new Map();  // channel -> [that number, reason] when the server ended it
  #leaving = new Map();  // channel -> the client's own unsubscribes on their way
  // channel -> the onMessage of the subscription the page's unsubscribe ended: the
  // channel's messages go there until the last of those unsubscribes is answered
  #leavingRoutes = new Map();

  constructor(request, forgetPosition, backoff = () => null) {
    this.#request = request;
    this.#forgetPosition = forgetPosition;
    this.#backoff = backoff;
  }

  get size() { return this.#channels.size; }

  /** The subscribed channels, sorted (a resume names them). */
  get names() { return [...this.#channels.keys()].sort(); }

  get followsPresence() { return [...this.#channels.values()].some((entry) => entry.presence); }

  has(channel) { return this.#channels.has(channel); }

  /** Join `channel` (Connection.subscribe). One that fails changes nothing held: a
   * channel subscribed already keeps its onMessage, and follows presence only if it did. */
  async subscribe(channel, onMessage, { params = null, presence = false, onUnsubscribed = null,
                                        timeoutMs = 30000 } = {}) {
    const number = this.subscribing(channel);
    try {
      await this.#request(subscribeFrame(channel, params, presence), timeoutMs);
    } catch (err) {
      this.subscribed(channel, number);
      throw err;
    }
    this.subscribed(channel, number, { onMessage, params, presence: Boolean(presence),
                                       onUnsubscribed });
  }

  /** Leave `channel` (Connection.unsubscribe); its messages read before the reply still
   * go to the subscription's onMessage (see `handler`). */
  unsubscribe(channel, timeoutMs) {
    const entry = this.#channels.get(channel);
    if (entry?.onMessage) {
      this.#leavingRoutes.set(channel, entry.onMessage);
    } else if (entry) {
      this.#leavingRoutes.delete(channel);  // (the subscription it ends has none)
    }
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
    } finally {  // (in the reply's task: before the frames behind it are handled)
      const still = this.#leaving.get(channel) - 1;
      if (still) {
        this.#leaving.set(channel, still);
      } else {  // a message of the channel from now on is a new membership's
        this.#leaving.delete(channel);
        this.#leavingRoutes.delete(channel);
      }
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

  /** The subscribe `number` ended: with `entry` when it succeeded; it counts only when no
   * unsubscribe of its channel was sent after it. One that follows presence gets the
   * channel's presence copy, made now (in the reply's task: the state comes right behind
   * it); a channel that follows it already goes on doing so (as the server does). */
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
    if (entry === null) return;
    if (left) {
      if (ended?.[0] === leftAt) {
        tell(entry.onUnsubscribed, channel, ended[1]);  // the server undid it at once
      }
      return;
    }
    const follows = entry.presence || this.#channels.get(channel)?.presence === true;
    this.#channels.set(channel, follows === entry.presence ? entry : { ...entry, presence: true });
    if (follows && !this.#presences.has(channel)) {
      this.#presences.set(channel, new Presence(channel));
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
    this.#leavingRoutes.delete(channel);  // (no message of that membership follows)
    if (this.#subscribing.has(channel)) this.#ended.set(channel, [this.#left.get(channel), reason]);
    tell(entry?.onUnsubscribed, channel, reason);
  }

  /** The presence of `channel`, held with presence (else null). */
  presence(channel) {
    return this.#presences.get(channel) ?? null;
  }

  /** A "presence_state" or "presence_diff" frame: to its channel's copy. */
  presenceFrame(frame) {
    this.#presences.get(frame.channel)?.apply(frame);
  }

  /** The function that gets `channel`'s messages instead of the "message" listeners: its
   * subscription's onMessage, or that of the one the page is leaving, until the reply. */
  handler(channel) {
    if (channel === null) return null;
    const entry = this.#channels.get(channel);
    return (entry ? entry.onMessage : this.#leavingRoutes.get(channel)) ?? null;
  }

  /** The socket closed: a round of subscribing again stops (the next reconnect starts its
   * own). */
  interrupt() { this.#round += 1; }

  /** After a reconnect into a fresh session the server forgot the subscriptions: send each
   * again (`presenceOnly`, into a kept session: those that follow presence). Ask again,
   * after the backoff, for those answered "try later" (TRY_LATER) until the server decides
   * (after maxAttempts such answers in a row the last counts as a refusal), the page leaves
   * the channel or the socket closes. Forget the ones the server refuses, telling their
   * onUnsubscribed the refusal's code; into a kept session leave each first (a refusal
   * changes no membership on the server), its messages going to the subscription
   * meanwhile; when that unsubscribe fails, it stays subscribed (the next reconnect asks
   * again). */
  async subscribeAgain(presenceOnly = false) {
    const round = ++this.#round;
    let asking = [...this.#channels].filter(([, entry]) => !presenceOnly || entry.presence);
    let warnedAt = -Infinity;
    for (let failures = 1; asking.length; failures += 1) {
      const later = await this.#askEach(asking, presenceOnly, round);
      if (later === null || !later.length) return;  // (null: the socket closed)
      const [channel, , err] = later[0];
      const delayMs = this.#backoff(failures);
      if (delayMs === null) {
        console.warn(`stabilizer: ${later.length} channel(s) not subscribed again after ` +
                     `${failures} answers in a row (${channel}: ${err.message}); giving up`);
        for (const [name, entry, error] of later) {
          await this.#refused(name, entry, error, presenceOnly);
        }
        return;
      }
      if (Date.now() - warnedAt >= WARN_EVERY_MS) {
        warnedAt = Date.now();
        console.warn(`stabilizer: ${later.length} channel(s) not subscribed again ` +
                     `(${channel}: ${err.message}); asking again in ${Math.round(delayMs)} ms`);
      }
      await new Promise((resolve) => { setTimeout(resolve, delayMs); });
      asking = later;
    }
  }

  /** Subscribe again to each channel in `asking` still subscribed as it was; end those
   * refused; the [channel, entry, error] of those answered "try later", or null when the
   * socket closed (`round` is over). */
  async #askEach(asking, kept, round) {
    const later = [];
    for (const [channel, entry] of asking) {
      if (round !== this.#round) return null;
      if (this.#channels.get(channel) !== entry) continue;  // unsubscribed (or anew) meanwhile
      const err = await this.#askAgain(channel, entry);
      if (round !== this.#round || LOST.has(err?.code)) return null;
      if (TRY_LATER.has(err?.code)) later.push([channel, entry, err]);
      else if (err) await this.#refused(channel, entry, err, kept);
    }
    return later;
  }

  /** Subscribe to `channel` again as `entry` holds it (with presence only when a presence
   * subscribe of it succeeded): the error it was answered with, or null (allowed). */
  async #askAgain(channel, entry) {
    try {
      await this.#request(subscribeFrame(channel, entry.params, entry.presence), 30000);
    } catch (err) {
      return err;
    }
    if (!this.#channels.has(channel)) {  // unsubscribed while this one was on its way
      await this.#leave(channel, 30000).catch(() => {});  // (a fresh session forgets it)
    }
    return null;
  }

  /** `channel`, subscribed again, was refused with `err`: forget it and tell its
   * onUnsubscribed the code; into a `kept` session leave it first. */
  async #refused(channel, entry, err, kept) {
    console.warn(`stabilizer: channel ${channel} was not subscribed again: ${err.message}`);
    if (kept && this.#channels.get(channel) === entry) {
      try {
        await this.#leave(channel, 30000);  // the session kept the membership
      } catch (error) {
        console.warn(`stabilizer: channel ${channel} was refused, but not left: ${error.message}`);
        return;
      }
    }
    if (this.#channels.get(channel) === entry) {
      this.delete(channel);
      this.#forgetPosition(channel);
      tell(entry.onUnsubscribed, channel, err.code ?? "error");
    }
  }
}

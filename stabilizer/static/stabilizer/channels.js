/**
 * stabilizer/channels.js: protocol v2's channel subscriptions as the client keeps them: the
 * function that gets each channel's messages, and subscribing again after a reconnect into
 * a session that kept no memberships.
 */

/** A subscribe request (without its id). */
export function subscribeFrame(channel, params) {
  const body = { type: "subscribe", channel };
  if (params !== null && params !== undefined) body.params = params;
  return body;
}

/** One connection's subscribed channels. */
export class Channels {
  #channels = new Map();  // subscribed channel -> {onMessage, params}

  get size() { return this.#channels.size; }

  add(channel, onMessage, params) {
    this.#channels.set(channel, { onMessage, params });
  }

  delete(channel) {
    this.#channels.delete(channel);
  }

  /** The function that gets `channel`'s messages instead of the "message" listeners. */
  handler(channel) {
    return channel === null ? null : this.#channels.get(channel)?.onMessage;
  }

  /** After a reconnect into a fresh session the server forgot the subscriptions: send each
   * again with `request(body, timeoutMs)`; forget the ones the server refuses now. */
  async subscribeAgain(request) {
    for (const [channel, entry] of [...this.#channels]) {
      const body = subscribeFrame(channel, entry.params);
      try {
        await request(body, 30000);
      } catch (err) {
        if (["timeout", "disconnected", "unavailable", "closed"].includes(err.code)) continue;
        console.warn(`stabilizer: channel ${channel} was not subscribed again: ${err.message}`);
        if (this.#channels.get(channel) === entry) this.#channels.delete(channel);
      }
    }
  }
}

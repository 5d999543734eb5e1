/**
 * stabilizer.js: the browser client of stabilizer (client protocol versions 1 and 2,
 * docs/protocol.md). Dependency-free ES modules, served by stabilizer's router: this one at
 * GET /stabilizer.js, its parts at GET /stabilizer/{name}.js, imported relative to it (so
 * the router's prefix is no matter).
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
 *                                            //   RPCError {code, message, detail, data}
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
 *   maxAttempts      attempts in a row that fail to open before giving up (Infinity); also
 *                    the "try later" answers in a row after which a channel subscribed again
 *                    is given up (below)
 *   maxAdviceMs      upper bound on the server's {"retry_ms": N} close-reason advice (60000)
 *   probeTimeoutMs   after 1.5 heartbeat intervals of silence the client sends {"type":"ping"};
 *                    no frame within this many ms: the link is dead, reconnect (10000; 0: off)
 *   connectTimeoutMs a socket not open (no session frame, nor any frame) this many ms after
 *                    it was made is closed, an attempt that failed (code 1006): a browser may
 *                    wait for good for the answer to an upgrade (10000; 0 or Infinity: none)
 *   protocols        WebSocket subprotocols
 *   protocol         2 speaks protocol v2 (section 6); 1, the default, the plain protocol
 *   getToken         v2: a function returning the access token (a string, null for none, or
 *                    a Promise of one); called before every connect and reconnect and when
 *                    the server asks for a refresh
 *   device           v2: this client instance's id (1-64 of A-Z a-z 0-9 . _ ~ -); default: one
 *                    made up per tab and URL, kept in sessionStorage with the newest token so
 *                    that a reload resumes the session
 *   params           v2: an object for the server's authenticator
 * The numeric ones are numbers >= 0 (maxQueue and maxAttempts whole), Infinity for no bound
 * (but backoffBaseMs); anything else throws a TypeError here. A wait of Infinity sets no
 * timer, and none is longer than a browser's timers take (2^31-1 ms, about 24.8 days).
 *
 * Connection: .state, .session (the last session frame), .token (the newest token),
 * .positions ({stream: [offset, epoch]}), .protocol, .clientId, .userId (null when
 * anonymous), .device and .expiresAt (v2: Unix seconds, moved on by each refresh; null
 * without expiry), .on(event, fn) (returns an unsubscribe function),
 * .off(event, fn), .send(data) (string, ArrayBuffer, view or Blob; anything else is sent as
 * JSON; true when written now, false when queued), .close(code = 1000, reason = ""),
 * .rpc(method, params = null, {timeoutMs = 30000}) (v2: a Promise of the result of the
 * server's procedure `method`; Infinity waits for good, and a timeoutMs that is no number
 * >= 0 rejects with a TypeError, unsent; it waits while reconnecting and rejects with an
 * RPCError whose code is the server's, or "timeout" (no reply in time) or "disconnected"
 * (the socket closed before the reply; in both the call may have run, and it is never sent
 * twice), or "closed" (closed for good before it was sent)). A v2 message frame that asks to be
 * acknowledged (the server's send_to_client(..., ack=True)) is acknowledged once the
 * listeners it went to returned. .subscribe(channel, onMessage = null,
 * {params, presence, onUnsubscribed, timeoutMs}) (v2: join `channel` if the server's
 * on_subscribe hook allows (one refused or failed changes nothing held: a channel held
 * already keeps its onMessage, and follows presence, .presence(channel), only if it did);
 * onMessage(data, position) then gets its messages instead of the "message" listeners; after
 * a reconnect that kept no memberships (no history, or a fresh session) it subscribes again;
 * after one that kept them, to the channels that follow presence, once the resume frame
 * came; a resume names the channels held, and the server ends those it left meanwhile;
 * onUnsubscribed(reason) is told when the server ends a subscription, or refuses one
 * made again; one made again and answered "try later" (unavailable, overloaded,
 * rate_limited, timeout) is asked again after the backoff until the server decides, the
 * page leaves the channel or the socket closes), .unsubscribe(channel) (v2: the channel's
 * messages read before its reply, sent before the leave, still go to onMessage) and
 * .publish(channel, data) (v2: through the server's on_publish hook); the three are Promises
 * rejected with an RPCError as rpc is.
 *
 * The state is "connecting" until the first open, "reconnecting" after any drop. The
 * connection opens on the server's session frame (or on its first frame when the server
 * sends none), answers pings with `pong`, keeps the newest token and reconnects with ?token=
 * (and ?positions= when history is on, while the URL's path and query stay within 6 KiB, as
 * servers read handshake lines of 8 KiB; beyond, the server replays from the session's start
 * and the client drops what it had). Close codes (protocol section 5): 1001, 1005, 1006,
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

// The parts (stabilizer/*.js), one concern each:
//   connection.js   Connection: opening, the session, received frames, reconnecting
//   calls.js        v2 requests awaiting a reply (rpc, subscribe, ...) and RPCError
//   channels.js     v2 subscriptions: whose function gets a channel's messages, resubscribing
//   credentials.js  v2 getToken and the answer to refresh requests
//   device.js       v2 device: the Web Lock and the sessionStorage slot of a default one
//   events.js       the listeners of the connection's events
//   frames.js       the wire, pure: frames, close codes and retry advice, URLs
//   options.js      connect()'s defaults and option checks
//   timers.js       waits of any length (setTimeout fires a long one at once)
//   watchdog.js     probing a silent link, dropping a dead one

import { Connection } from "./stabilizer/connection.js";

export { RPCError } from "./stabilizer/calls.js";
export { Connection };

/** Open a stabilizer connection that reconnects by itself; see the comment above. */
export function connect(url, options = {}) {
  return new Connection(url, options);
}

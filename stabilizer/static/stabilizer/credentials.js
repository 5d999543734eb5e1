/**
 * stabilizer/credentials.js: protocol v2's credentials: the access token getToken gives
 * (BadToken when what it gives is none), and the answer to the server's refresh requests.
 */

/** getToken gave something that is no token: the connection closes (with code null). */
export class BadToken extends TypeError {}

/** The access token getToken gives (null without getToken); raise BadToken for a value
 * that is neither a non-empty string nor null. */
export async function fetchToken(getToken) {
  const token = getToken ? await getToken() : null;
  if (token === null || token === undefined) return null;
  if (typeof token !== "string" || !token) {
    throw new BadToken(`stabilizer: getToken must give a non-empty string or null, ` +
                       `got ${typeof token}`);
  }
  return token;
}

/** Answers a connection's refresh requests, one at a time. */
export class Refresher {
  #getToken; #refreshing = false;

  constructor(getToken) {
    this.#getToken = getToken;
  }

  /** Send a fresh token on `ws` if it is still `current()` and open once getToken gave one. */
  async refresh(ws, current) {
    if (this.#refreshing) return;
    this.#refreshing = true;
    try {
      const token = await fetchToken(this.#getToken);
      if (!token) {
        console.warn("stabilizer: getToken gave no token to refresh the credentials with");
      } else if (ws === current() && ws.readyState === WebSocket.OPEN) {
        ws.send(JSON.stringify({ type: "refresh", token }));
      }
    } catch (err) {  // nothing sent: the server closes with 4003, the reconnect asks again
      console.warn("stabilizer: getToken failed while refreshing the credentials", err);
    } finally {
      this.#refreshing = false;
    }
  }
}

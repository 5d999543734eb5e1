/**
 * stabilizer/options.js: connect()'s options: their defaults, and the checks that refuse a
 * bad one when the connection is made.
 */

import { DEVICE } from "./device.js";

export const DEFAULTS = {
  token: null, maxQueue: 100, backoffBaseMs: 250, backoffCapMs: 30000, stableAfterMs: 5000,
  maxAttempts: Infinity, maxAdviceMs: 60000, probeTimeoutMs: 10000, protocols: undefined,
  protocol: 1, getToken: null, device: null, params: null,
};

export function checkOptions(options) {
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

/**
 * stabilizer/options.js: connect()'s options: their defaults, and the checks that refuse a
 * bad one when the connection is made.
 */

import { DEVICE } from "./device.js";

export const DEFAULTS = {
  token: null, maxQueue: 100, backoffBaseMs: 250, backoffCapMs: 30000, stableAfterMs: 5000,
  maxAttempts: Infinity, maxAdviceMs: 60000, probeTimeoutMs: 10000, connectTimeoutMs: 10000,
  protocols: undefined, protocol: 1, getToken: null, device: null, params: null,
};

// the numeric options: each a number >= 0, Infinity for no bound but where it means nothing
const COUNTS = ["maxQueue", "maxAttempts"];  // (whole numbers)
const WAITS = ["backoffCapMs", "stableAfterMs", "maxAdviceMs", "probeTimeoutMs",
               "connectTimeoutMs"];

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
  for (const name of COUNTS) {
    const value = options[name];
    if (!(value >= 0 && (Number.isInteger(value) || value === Infinity))) {
      throw new TypeError(`stabilizer: ${name} must be a whole number >= 0 or Infinity, ` +
                          `got ${shown(value)}`);
    }
  }
  // (a base of Infinity would make every backoff the cap, or NaN under a cap of Infinity)
  if (!(Number.isFinite(options.backoffBaseMs) && options.backoffBaseMs >= 0)) {
    throw new TypeError(`stabilizer: backoffBaseMs must be a finite number of ms >= 0, ` +
                        `got ${shown(options.backoffBaseMs)}`);
  }
  for (const name of WAITS) checkWait(name, options[name]);
}

/** Throw a TypeError unless `value` (the option `name`) is a number of ms >= 0 or Infinity
 * (no bound). */
export function checkWait(name, value) {
  if (!(typeof value === "number" && value >= 0)) {
    throw new TypeError(`stabilizer: ${name} must be a number of ms >= 0 or Infinity, ` +
                        `got ${shown(value)}`);
  }
}

function shown(value) {
  return typeof value === "string" ? JSON.stringify(value) : String(value);
}

/**
 * stabilizer/device.js: the device a protocol v2 connection speaks as. A default one is made
 * up per tab and URL and held by one tab: a Web Lock keeps a duplicated tab off it, and a
 * sessionStorage slot keeps it with the newest token so that a reload resumes the session.
 */

export const DEVICE = /^[A-Za-z0-9._~-]{1,64}$/;
const HELD = new Map();  // device -> release(): the default devices this page holds

/** A connection's device: the one given, or a default one it claims. */
export class DeviceSlot {
  id; #claimed = false; #key = null;  // #key: the sessionStorage slot this connection writes

  constructor(id) {
    this.id = id;
  }

  /** Take the device (and, with no `token`, the token: `adopt(token)`) this tab used before
   * (a reload), unless another tab holds them (a duplicated tab copies sessionStorage); else
   * make up a new device. */
  async claim(url, token, adopt) {
    const key = storeKey(url);
    const saved = readStored(key);
    const mine = saved && DEVICE.test(saved.device) && !HELD.has(saved.device)
      && await hold(saved.device);
    if (mine) {
      this.id = saved.device;
      if (!token && typeof saved.token === "string") {
        token = saved.token;
        adopt(token);
      }
    } else {
      this.id = newDevice();
      await hold(this.id);
    }
    this.#claimed = true;
    // another connection of this page owns the stored slot: leave it to that one
    this.#key = saved && HELD.has(saved.device) && !mine ? null : key;
    this.save(token);
  }

  /** Keep the device with `token` for a reload (a claimed default device only). */
  save(token) {
    if (!this.#key) return;
    try {
      sessionStorage.setItem(this.#key, JSON.stringify({ device: this.id, token }));
    } catch {  // storage disabled or full: the session just does not survive a reload
    }
  }

  /** Let another page (a duplicated tab) take the device once this connection ends. */
  release() {
    if (this.#claimed) release(this.id);
    this.#claimed = false;
  }
}

/** Hold a Web Lock named after `device` while this page uses it; false when another page
 * (a duplicated tab) holds it. Without Web Locks (insecure contexts) only this page counts. */
function hold(device) {
  HELD.set(device, () => {});
  const locks = globalThis.navigator?.locks;
  if (!locks) return Promise.resolve(true);
  return new Promise((resolve) => {
    locks.request(`stabilizer.device ${device}`, { ifAvailable: true }, (lock) => {
      if (!lock) {
        HELD.delete(device);
        resolve(false);
        return undefined;
      }
      resolve(true);
      return new Promise((done) => HELD.set(device, done));  // held until release()
    }).catch(() => resolve(true));  // no lock to be had: go on without
  });
}

function release(device) {
  HELD.get(device)?.();
  HELD.delete(device);
}

/** The sessionStorage key of the device and token a connection to `url` keeps. */
function storeKey(url) {
  const where = new URL(url);
  return `stabilizer.v2 ${where.origin}${where.pathname}`;
}

function readStored(key) {
  try {
    const value = JSON.parse(sessionStorage.getItem(key));
    return value && typeof value === "object" ? value : null;
  } catch {
    return null;
  }
}

function newDevice() {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

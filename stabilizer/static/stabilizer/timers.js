/**
 * stabilizer/timers.js: waits of any length. Browsers take a setTimeout delay of at most
 * 2^31-1 ms (about 24.8 days) and fire a longer one, or Infinity, at once; later() waits at
 * most that long, and not at all for Infinity.
 */

export const MAX_TIMER_MS = 2 ** 31 - 1;

/** Call `fn` after `ms` (at most MAX_TIMER_MS), or never when `ms` is Infinity; a handle for
 * clearTimeout (null when no timer was set). */
export function later(fn, ms) {
  return ms === Infinity ? null : setTimeout(fn, Math.min(ms, MAX_TIMER_MS));
}

/** Reconnect delays: exponential backoff with full jitter. */
export interface BackoffOptions {
  /** The first delay's upper bound, ms. Default 500. */
  initialMs?: number;
  /** The largest upper bound, ms. Default 30000. */
  maxMs?: number;
}

/**
 * Attempt `n` (from 0) waits `random() * min(maxMs, initialMs * 2^n)`:
 * "full jitter", so that clients dropped together do not come back together.
 */
export class Backoff {
  readonly initialMs: number;
  readonly maxMs: number;
  private readonly random: () => number;
  /** How many delays were handed out since the last `reset()`. */
  attempt = 0;

  constructor(options: BackoffOptions = {}, random: () => number = Math.random) {
    this.initialMs = Math.max(1, options.initialMs ?? 500);
    this.maxMs = Math.max(this.initialMs, options.maxMs ?? 30_000);
    this.random = random;
  }

  /** The upper bound of attempt `n`'s delay. */
  ceiling(n: number = this.attempt): number {
    // 2^n overflows to Infinity harmlessly; cap n so it stays finite.
    return Math.min(this.maxMs, this.initialMs * 2 ** Math.min(n, 52));
  }

  /** The next delay, ms; counts an attempt. */
  next(): number {
    const d = this.random() * this.ceiling(this.attempt);
    this.attempt++;
    return Math.floor(d);
  }

  /** Back to the first attempt (after a connection that authenticated). */
  reset(): void {
    this.attempt = 0;
  }
}

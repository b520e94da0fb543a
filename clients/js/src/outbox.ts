import type { GatewayError } from './errors.js';
import type { ClientFrame, ServerFrame } from './types.js';

/**
 * One request of the client, from the call until its reply. While it is not
 * written it waits in the `Outbox`; once written it is "in flight" under its
 * request `id`.
 */
export interface Request {
  /** Call order: the outbox writes in this order. */
  readonly seq: number;
  /** The frame without `id` (a retried send keeps its frame, and so its nonce). */
  readonly frame: ClientFrame;
  /**
   * Room-scoped requests wait until that room's `join` is answered on the
   * current connection (when the application joined it through this client).
   */
  readonly room: string | undefined;
  /**
   * Kept across connections: a non-ephemeral `send` is written again after
   * a reconnect, with the same nonce, until it is answered. Other requests
   * fail with `disconnected` when the connection drops.
   */
  readonly keep: boolean;
  /** Request id while written (0: not written). */
  id: number;
  /** Timeout handle. */
  timer: unknown;
  /** Settles the request (called once). */
  done(error: GatewayError | null, reply?: ServerFrame): void;
}

/** The requests waiting to be written, in call order. */
export class Outbox {
  private items: Request[] = [];

  get size(): number {
    return this.items.length;
  }

  /** Adds `r` at its place in call order (a retried send goes back before later ones). */
  add(r: Request): void {
    let i = this.items.length;
    while (i > 0 && this.items[i - 1]!.seq > r.seq) i--;
    this.items.splice(i, 0, r);
  }

  /** Removes `r`; says whether it was there. */
  remove(r: Request): boolean {
    const i = this.items.indexOf(r);
    if (i < 0) return false;
    this.items.splice(i, 1);
    return true;
  }

  /** Removes and returns, in order, the requests `pick` accepts. */
  take(pick: (r: Request) => boolean): Request[] {
    const taken: Request[] = [];
    const left: Request[] = [];
    for (const r of this.items) (pick(r) ? taken : left).push(r);
    this.items = left;
    return taken;
  }

  /** The waiting requests, in order (a copy). */
  list(): Request[] {
    return this.items.slice();
  }
}

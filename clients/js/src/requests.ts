import { GatewayError } from './errors.js';
import { Outbox, type Request } from './outbox.js';
import type { Timers, WebSocketLike } from './platform.js';
import type { ClientErrorCode, ClientFrame, ErrorFrame, ServerFrame, UnknownFrame } from './types.js';

/**
 * The request/reply table: requests waiting to be written (the outbox),
 * requests in flight under their request `id`, and their reply timeouts.
 * It knows nothing of rooms or of the connection's lifecycle: the
 * connection sets `socket`, and the caller says which waiting requests
 * may be written (`flush`).
 */
export class Requests {
  private readonly outbox = new Outbox();
  private readonly inflight = new Map<number, Request>();
  private seq = 0;
  private nextId = 1;
  /** The socket requests are written on: set by the connection while one is open. */
  socket: WebSocketLike | undefined;

  constructor(
    private readonly timers: Timers,
    /** Reply timeout of each request, ms. */
    readonly timeoutMs: number,
  ) {}

  /** Non-ephemeral sends not yet acknowledged (waiting or in flight). */
  get pendingSends(): number {
    let n = 0;
    for (const r of this.outbox.list()) if (r.keep) n++;
    for (const r of this.inflight.values()) if (r.keep) n++;
    return n;
  }

  /** A new request, in call order; `done` is called once, whatever happens. */
  create(frame: ClientFrame, room: string | undefined, keep: boolean, done: Request['done']): Request {
    let settled = false;
    return {
      seq: ++this.seq,
      frame,
      room,
      keep,
      id: 0,
      timer: undefined,
      done: (err, reply) => {
        if (settled) return;
        settled = true;
        done(err, reply);
      },
    };
  }

  /** Settles `r` and stops its timeout. */
  settle(r: Request, err: GatewayError | null, reply?: ServerFrame): void {
    this.timers.clearTimeout(r.timer);
    r.timer = undefined;
    r.done(err, reply);
  }

  /** Starts `r`'s reply timeout. */
  arm(r: Request): void {
    this.timers.clearTimeout(r.timer);
    r.timer = this.timers.setTimeout(() => {
      r.timer = undefined;
      if (r.id) this.inflight.delete(r.id);
      this.outbox.remove(r);
      r.id = 0;
      r.done(GatewayError.client('timeout', `no reply to ${r.frame.op} within ${this.timeoutMs} ms`, r.frame.op, roomOf(r)));
    }, this.timeoutMs);
  }

  /** Writes `r` on the socket, in flight under a new id. A kept send's timeout starts at each write. */
  write(r: Request): void {
    const ws = this.socket;
    if (!ws) return;
    r.id = this.nextId++;
    this.inflight.set(r.id, r);
    if (r.keep) this.arm(r);
    try {
      ws.send(JSON.stringify({ ...r.frame, id: r.id }));
    } catch {
      /* the close event settles it */
    }
  }

  /** Arms and writes at once: the client's own requests (join, leave, refresh, ping). */
  send(r: Request): void {
    this.arm(r);
    this.write(r);
  }

  /** Writes a frame that has no reply (`typing`); says whether it was written. */
  post(frame: ClientFrame): boolean {
    if (!this.socket) return false;
    try {
      this.socket.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  /** Puts `r` in the outbox, at its place in call order. */
  queue(r: Request): void {
    this.outbox.add(r);
  }

  /** Writes, in call order, every waiting request `ready` accepts. */
  flush(ready: (r: Request) => boolean): void {
    if (!this.socket) return;
    for (const r of this.outbox.take(ready)) this.write(r);
  }

  /** Rejects with `err` the waiting requests `pick` accepts. */
  reject(pick: (r: Request) => boolean, err: GatewayError): void {
    for (const r of this.outbox.take(pick)) this.settle(r, err);
  }

  /**
   * Settles request `id` with `frame` (an `error` frame rejects it).
   * False when no request `id` is in flight (none, or it timed out).
   */
  answer(id: number, frame: ServerFrame | UnknownFrame): boolean {
    const r = this.inflight.get(id);
    if (!r) return false;
    this.inflight.delete(id);
    if (frame.op === 'error') {
      const e = frame as ErrorFrame;
      this.settle(r, new GatewayError(e.code as GatewayError['code'], e.message, { op: r.frame.op, room: roomOf(r) }));
    } else this.settle(r, null, frame as ServerFrame);
    return true;
  }

  /**
   * The socket is gone (`disconnected`) or the client stopped (`closed`):
   * in-flight kept sends go back to the outbox when only disconnected,
   * every other written request fails with `code`, and so does every
   * waiting request that is not a kept send.
   */
  release(code: ClientErrorCode, message: string): void {
    const err = GatewayError.client(code, message);
    const flying = [...this.inflight.values()].sort((a, b) => a.seq - b.seq);
    this.inflight.clear();
    for (const r of flying) {
      r.id = 0;
      if (r.keep && code === 'disconnected') {
        this.timers.clearTimeout(r.timer);
        r.timer = undefined;
        this.outbox.add(r);
      } else this.settle(r, err);
    }
    this.reject((r) => !r.keep, err);
  }
}

function roomOf(r: Request): string | undefined {
  return 'room' in r.frame ? r.frame.room : undefined;
}

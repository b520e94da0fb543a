// Test doubles: a fake WebSocket the tests drive as the server, and fake
// timers and random numbers, so every test is deterministic and instant.
import { ChatClient, type ChatClientOptions, type Timers, type WebSocketLike } from '../src/index.js';

/** Timers that run only when the test advances the clock. */
export class FakeTimers implements Timers {
  t = 0;
  private seq = 0;
  private queue: Array<{ at: number; seq: number; fn: () => void }> = [];

  setTimeout = (fn: () => void, ms: number): unknown => {
    const entry = { at: this.t + Math.max(0, ms), seq: ++this.seq, fn };
    this.queue.push(entry);
    return entry;
  };

  clearTimeout = (h: unknown): void => {
    const i = this.queue.indexOf(h as never);
    if (i >= 0) this.queue.splice(i, 1);
  };

  now = (): number => this.t;

  /** Moves the clock by `ms`, running every timer due on the way, in order. */
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      this.queue.sort((a, b) => a.at - b.at || a.seq - b.seq);
      const next = this.queue[0];
      if (!next || next.at > end) break;
      this.queue.shift();
      this.t = next.at;
      next.fn();
    }
    this.t = end;
  }

  /** Delays from now of the pending timers, ascending. */
  pending(): number[] {
    return this.queue.map((e) => e.at - this.t).sort((a, b) => a - b);
  }
}

/** A frame the client sent, parsed. */
export type Sent = { op: string; id?: number; [k: string]: unknown };

/** A fake socket: `send` records frames; the test plays the server. */
export class FakeSocket implements WebSocketLike {
  readyState = 0;
  sent: Sent[] = [];
  closedWith: { code?: number | undefined; reason?: string | undefined } | undefined;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;

  constructor(readonly url: string) {}

  send(data: string): void {
    if (this.readyState !== 1) throw new Error(`send on a socket in state ${this.readyState}`);
    this.sent.push(JSON.parse(data) as Sent);
  }

  close(code?: number, reason?: string): void {
    this.closedWith = { code, reason };
    this.readyState = 2;
  }

  // ---- the server's side

  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(frame: object): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** The server (or the network) closes the connection. */
  serverClose(code: number, reason = ''): void {
    this.readyState = 3;
    this.onerror?.({});
    this.onclose?.({ code, reason });
  }

  /** Frames sent with this op. */
  ops(op: string): Sent[] {
    return this.sent.filter((f) => f.op === op);
  }

  /** The last frame sent with this op (fails when none). */
  last(op: string): Sent {
    const f = this.ops(op).pop();
    if (!f) throw new Error(`no ${op} frame sent; sent: ${JSON.stringify(this.sent)}`);
    return f;
  }

  /** Replies to the last `op` request with `{op: replyOp, id, ...fields}`. */
  reply(op: string, fields: object = {}, replyOp = 'ok'): void {
    this.receive({ op: replyOp, id: this.last(op).id, ...fields });
  }

  /** Opens and answers the auth request. */
  auth(user = 'u1', extra: object = {}): void {
    this.open();
    this.reply('auth', { user, node: 'gw-0', ...extra });
  }
}

/** A client wired to fake sockets and timers, with the sockets it opened. */
export function setup(options: Partial<ChatClientOptions> = {}) {
  const sockets: FakeSocket[] = [];
  const timers = new FakeTimers();
  class WS extends FakeSocket {
    constructor(url: string) {
      super(url);
      sockets.push(this);
    }
  }
  const client = new ChatClient({
    urls: 'ws://gw/ws',
    WebSocket: WS,
    timers,
    random: () => 0.5,
    pingIntervalMs: 0,
    ...options,
  });
  const events: Array<[string, unknown]> = [];
  for (const name of [
    'msg', 'edit', 'delete', 'react', 'unreact', 'joined', 'left', 'typing', 'read', 'removed',
    'error', 'unknown', 'state', 'connected', 'disconnected', 'closed', 'gap', 'joinFailed', 'authFailed',
  ] as const) {
    client.on(name, (p: unknown) => events.push([name, p]));
  }
  return {
    client,
    sockets,
    timers,
    events,
    /** The newest socket. */
    get sock(): FakeSocket {
      const s = sockets[sockets.length - 1];
      if (!s) throw new Error('no socket opened');
      return s;
    },
    /** Payloads of the events named `name`. */
    of<T = Record<string, unknown>>(name: string): T[] {
      return events.filter(([n]) => n === name).map(([, p]) => p as T);
    },
  };
}

/** Lets pending promise callbacks run. */
export async function flush(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise<void>((r) => setImmediate(r));
}

/** A promise's outcome so far, without awaiting it forever. */
export function track<T>(p: Promise<T>) {
  const s: { value?: T; error?: unknown; settled: boolean; count: number } = { settled: false, count: 0 };
  p.then(
    (v) => {
      s.value = v;
      s.settled = true;
      s.count++;
    },
    (e) => {
      s.error = e;
      s.settled = true;
      s.count++;
    },
  );
  return s;
}

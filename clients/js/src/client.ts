import { Backoff, type BackoffOptions } from './backoff.js';
import { Emitter } from './emitter.js';
import { GatewayError } from './errors.js';
import { compareIds, makeNonce, maxId } from './ids.js';
import { Outbox, type Request } from './outbox.js';
import type {
  ClientErrorCode,
  ClientFrame,
  DeleteEvent,
  EditEvent,
  ErrorFrame,
  HistoryMessage,
  HistoryReply,
  Json,
  MsgEvent,
  MsgId,
  OkReply,
  PresenceEvent,
  PresenceReply,
  ReactEvent,
  ReadEvent,
  ReceiptsReply,
  RemovedEvent,
  RoomEvent,
  ServerFrame,
  TypingEvent,
  UnknownFrame,
} from './types.js';

// ---------------------------------------------------------------- platform

type Handler<E> = { bivarianceHack(event: E): void }['bivarianceHack'];

/** The part of the WebSocket API the client uses (browsers' `WebSocket` and the `ws` package fit). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: Handler<unknown> | null;
  onmessage: Handler<{ data: unknown }> | null;
  onclose: Handler<{ code: number; reason: string }> | null;
  onerror: Handler<unknown> | null;
}

/** A WebSocket constructor: `new WebSocket(url)`. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Timers, injectable for tests. */
export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  /** Current time, ms. */
  now(): number;
}

interface GlobalTimers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(h: unknown): void;
  WebSocket?: WebSocketConstructor;
}
const g = globalThis as unknown as GlobalTimers;

const realTimers: Timers = {
  setTimeout: (fn, ms) => g.setTimeout(fn, ms),
  clearTimeout: (h) => g.clearTimeout(h),
  now: () => Date.now(),
};

// ---------------------------------------------------------------- public types

/**
 * - `disconnected`: not connected (before `connect()`, or waiting to reconnect).
 * - `connecting`: a socket is opening or authenticating.
 * - `connected`: authenticated; rooms are being (or have been) re-joined.
 * - `closed`: stopped for good (`close()`, or a close code that forbids reconnecting); `connect()` starts again.
 */
export type ClientState = 'connecting' | 'connected' | 'disconnected' | 'closed';

/** Options of `new ChatClient(options)`. */
export interface ChatClientOptions {
  /** `ws://host/ws` URL(s). With several, each (re)connect attempt takes the next one in turn. */
  urls: string | string[];
  /** A JWT. Used until the server refuses it (then `getToken` is asked, if given). */
  token?: string;
  /** Gives a fresh JWT: called when there is no token yet, after a 4001, and before `expires_in` runs out (`refresh`). */
  getToken?: () => Promise<string>;
  /** Authenticate as a guest (no token). Default: true when neither `token` nor `getToken` is given. */
  guest?: boolean;
  /** WebSocket constructor. Default `globalThis.WebSocket` (Node 20: pass the `ws` package's). */
  WebSocket?: WebSocketConstructor;
  /** Reconnect backoff: full jitter, `random() * min(maxMs, initialMs * 2^attempt)`. Defaults 500 / 30000. */
  backoff?: BackoffOptions;
  /** Reply timeout of each request, and of open + auth, ms. Default 10000. */
  requestTimeoutMs?: number;
  /** Bound of the random delay before reconnecting after 1001 (draining) or 4008 (slow consumer), ms. Default 250. */
  fastReconnectMs?: number;
  /** Least delay after 4029 (rate limited), added to the backoff, ms. Default 5000. */
  rateLimitedDelayMs?: number;
  /** Send a `ping` op after this long without any frame from the server; no `pong` within `requestTimeoutMs` drops the connection. 0: off. Default 30000. */
  pingIntervalMs?: number;
  /** Random numbers in [0, 1) for jitter. Default `Math.random`. */
  random?: () => number;
  /** Timers (tests). Default the global ones and `Date.now`. */
  timers?: Timers;
}

/** Result of `join`. */
export interface JoinResult {
  /** False when the server could not replay everything since the last seen id: a `gap` event was emitted too. */
  recovered: boolean;
  /** (1.1) The user's read marker in the room, when there is one. */
  read?: MsgId;
}

/** Options of `send`. */
export interface SendOptions {
  /** Delivered live, never stored; not queued while disconnected. */
  ephemeral?: boolean;
  /** (1.1) Id of the message this one replies to. */
  replyTo?: MsgId;
  /** (1.1) Your own nonce (1–64 of `[A-Za-z0-9_-]`); default a random one. Re-sending with the same nonce is safe. */
  nonce?: string;
}

/** Result of `send`. */
export interface SendResult {
  room: string;
  /** The message id. */
  msg: MsgId;
  /** Server time, Unix ms. */
  ts: number;
  /** True when the server had this nonce already (a retry): nothing was stored twice. */
  duplicate: boolean;
  /** The nonce the send carried. */
  nonce: string;
}

/** Result of `edit`, `delete`, `react`, `unreact`. */
export interface ChangeResult {
  room: string;
  /** The event's id; absent when nothing changed (a reaction held already). */
  msg?: MsgId;
  ts?: number;
}

/** Options of `history`: `before` or `after` (not both), `limit` 1–500 (server default 50). */
export type HistoryOptions = { limit?: number } & ({ before?: MsgId; after?: never } | { after?: MsgId; before?: never });

/** Why the client stopped (`closed` event). */
export type StopCause =
  /** `close()` was called. */
  | 'client'
  /** 4003: disconnected by an operator, or the token was revoked. */
  | 'revoked'
  /** 4001 with a fixed `token` and no `getToken`: nothing else to try. */
  | 'unauthorized'
  /** 1002/1003/1007/1008/1009: the server refused frames of this client (a bug to fix). */
  | 'protocol';

/** Every event of `ChatClient`, with its payload. */
export interface ChatClientEvents {
  /** A message (live, or replayed by a re-join), after de-duplication. */
  msg: MsgEvent;
  /** (1.1) A message was edited. */
  edit: EditEvent;
  /** (1.1) A message was deleted. */
  delete: DeleteEvent;
  /** (1.1) A reaction was added. */
  react: ReactEvent;
  /** (1.1) A reaction was removed. */
  unreact: ReactEvent;
  /** Any of `msg`/`edit`/`delete`/`react`/`unreact` (feed it to `RoomView.apply`). */
  roomEvent: RoomEvent;
  /** A user's first connection joined a room. */
  joined: PresenceEvent;
  /** A user's last connection left a room. */
  left: PresenceEvent;
  typing: TypingEvent;
  /** (1.1) A read marker moved. */
  read: ReadEvent;
  /** (1.1) This connection was removed from a room (it is not re-joined). */
  removed: RemovedEvent;
  /** An `error` frame that answers no pending request (e.g. "token expired", a bad frame). */
  error: GatewayError;
  /** Any server frame with an unknown `op`. */
  unknown: UnknownFrame;
  /** The state changed. */
  state: { state: ClientState; previous: ClientState };
  /** Authenticated (rooms are re-joined next). */
  connected: { user: string; node: string; url: string; expiresIn?: number };
  /** The socket closed (or was given up). `delayMs`: when the next attempt starts, if `willReconnect`. */
  disconnected: { code: number; reason: string; willReconnect: boolean; delayMs?: number };
  /** Stopped for good: no more reconnects. */
  closed: { cause: StopCause; code: number; reason: string };
  /** Messages of `room` may be missing: the re-join was not `recovered`, or there was no last seen id to resume from. Page with `history`. */
  gap: { room: string; since?: MsgId };
  /** A (re-)join failed: the room is no longer joined; requests waiting on it were rejected. */
  joinFailed: { room: string; error: GatewayError };
  /** The server refused the token (auth, refresh, or expiry). `willRetry`: a new one is fetched with `getToken`. */
  authFailed: { error: GatewayError; willRetry: boolean };
}

interface RoomState {
  ready: boolean;
  joining: boolean;
  joinedBefore: boolean;
  result: JoinResult | undefined;
  waiters: Array<Request['done']>;
}

const ROOM_EVENTS = ['msg', 'edit', 'delete', 'react', 'unreact'];
const PASS_EVENTS = ['joined', 'left', 'typing', 'read'];
const FATAL_CODES = [1002, 1003, 1007, 1008, 1009];

/**
 * A client of the chat gateway: one WebSocket, re-opened by itself, with
 * rooms re-joined from the last seen id and sends kept in an outbox until
 * acknowledged. See README.md for every behaviour.
 */
export class ChatClient extends Emitter<ChatClientEvents> {
  private readonly urls: string[];
  private readonly WS: WebSocketConstructor;
  private readonly getToken: (() => Promise<string>) | undefined;
  private readonly guest: boolean;
  private readonly timers: Timers;
  private readonly random: () => number;
  private readonly backoff: Backoff;
  private readonly timeoutMs: number;
  private readonly fastMs: number;
  private readonly limitedMs: number;
  private readonly pingMs: number;

  private token: string | undefined;
  private tokenStale = false;
  private _state: ClientState = 'disconnected';
  private _user: string | undefined;
  private _node: string | undefined;
  private stopped = true;
  /** Counts starts and stops: an `open` that awaited `getToken` across one gives up. */
  private gen = 0;
  private urlIndex = 0;
  private ws: WebSocketLike | undefined;
  private wsUrl = '';
  private nextId = 1;
  private seq = 0;
  private readonly outbox = new Outbox();
  private readonly inflight = new Map<number, Request>();
  private readonly rooms = new Map<string, RoomState>();
  private readonly seen = new Map<string, MsgId>();
  private reconnectTimer: unknown;
  private handshakeTimer: unknown;
  private refreshTimer: unknown;
  private pingTimer: unknown;
  private lastRx = 0;
  private pinging = false;
  private authError: GatewayError | undefined;
  private waitingConnect: Array<{ resolve(v: { user: string; node: string }): void; reject(e: GatewayError): void }> = [];

  constructor(options: ChatClientOptions) {
    super();
    this.urls = typeof options.urls === 'string' ? [options.urls] : options.urls.slice();
    if (this.urls.length === 0) throw new TypeError('ChatClient: no url');
    const WS = options.WebSocket ?? g.WebSocket;
    if (!WS) throw new TypeError('ChatClient: no WebSocket here; pass options.WebSocket (e.g. the ws package)');
    this.WS = WS;
    this.token = options.token;
    this.getToken = options.getToken;
    this.guest = options.guest ?? (options.token === undefined && options.getToken === undefined);
    this.timers = options.timers ?? realTimers;
    this.random = options.random ?? Math.random;
    this.backoff = new Backoff(options.backoff, this.random);
    this.timeoutMs = options.requestTimeoutMs ?? 10_000;
    this.fastMs = options.fastReconnectMs ?? 250;
    this.limitedMs = options.rateLimitedDelayMs ?? 5_000;
    this.pingMs = options.pingIntervalMs ?? 30_000;
  }

  // ------------------------------------------------------------ getters

  /** `connecting`, `connected`, `disconnected` or `closed`. */
  get state(): ClientState {
    return this._state;
  }
  /** The authenticated user id (a guest's changes at each connection), once connected. */
  get user(): string | undefined {
    return this._user;
  }
  /** The gateway node of the current connection. */
  get node(): string | undefined {
    return this._node;
  }
  /** The URL of the current (or last) socket. */
  get url(): string {
    return this.wsUrl;
  }
  /** Rooms joined through this client (re-joined after each reconnect). */
  get joinedRooms(): string[] {
    return [...this.rooms.keys()];
  }
  /** Non-ephemeral sends not yet acknowledged (waiting or in flight). */
  get pendingSends(): number {
    let n = 0;
    for (const r of this.outbox.list()) if (r.keep) n++;
    for (const r of this.inflight.values()) if (r.keep) n++;
    return n;
  }
  /** The last room-event id seen in `room` (what a re-join sends as `since`). */
  lastSeen(room: string): MsgId | undefined {
    return this.seen.get(room);
  }

  // ------------------------------------------------------------ connection

  /**
   * Starts connecting (and reconnecting) if not started. Resolves at the
   * next successful authentication (at once if connected); rejects with
   * `closed` if the client stops first. Reconnecting goes on by itself
   * whether or not the promise is awaited. Called while waiting to
   * reconnect, it tries at once instead of waiting out the delay.
   */
  connect(): Promise<{ user: string; node: string }> {
    if (this._state === 'connected') return Promise.resolve({ user: this._user!, node: this._node! });
    const p = new Promise<{ user: string; node: string }>((resolve, reject) =>
      this.waitingConnect.push({ resolve, reject }),
    );
    if (this.stopped) {
      this.stopped = false;
      this.gen++;
      this.backoff.reset();
      void this.open();
    } else if (this.reconnectTimer !== undefined) {
      // Waiting to reconnect: try now (a "retry now" button).
      this.timers.clearTimeout(this.reconnectTimer);
      void this.open();
    }
    return p;
  }

  /**
   * Closes the connection and stops reconnecting. Every pending request and
   * queued send is rejected with `closed`; joined rooms are forgotten (the
   * last seen ids are kept, so a later `join` resumes). State `closed`.
   */
  close(): void {
    if (this.stopped && this._state === 'closed') return;
    this.stop('client', 1000, 'closed by client');
  }

  private async open(): Promise<void> {
    this.reconnectTimer = undefined;
    this.setState('connecting');
    const url = this.urls[this.urlIndex++ % this.urls.length]!;
    this.wsUrl = url;
    const gen = this.gen;
    let token: string | undefined;
    if (!this.guest) {
      if ((this.token === undefined || this.tokenStale) && this.getToken) {
        try {
          const t = await this.getToken();
          if (gen !== this.gen) return;
          this.token = t;
          this.tokenStale = false;
        } catch (e) {
          if (gen !== this.gen) return;
          this.emit('error', GatewayError.client('disconnected', `getToken failed: ${String(e)}`, 'auth'));
          return this.closed(1006, 'getToken failed');
        }
      }
      token = this.token;
    }
    let ws: WebSocketLike;
    try {
      ws = new this.WS(url);
    } catch (e) {
      this.emit('error', GatewayError.client('disconnected', `cannot open ${url}: ${String(e)}`));
      return this.closed(1006, 'cannot open');
    }
    this.ws = ws;
    this.authError = undefined;
    this.handshakeTimer = this.timers.setTimeout(() => this.drop('open/auth timeout'), this.timeoutMs);
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.lastRx = this.timers.now();
      this.write(this.request({ op: 'auth', ...(token !== undefined ? { token } : {}) }, undefined, false, (err, reply) =>
        err ? err.source === 'server' && (this.authError = err) : this.onAuthOk(reply as OkReply),
      ));
    };
    ws.onmessage = (ev) => {
      if (this.ws === ws) this.onFrame(ev.data);
    };
    ws.onclose = (ev) => {
      if (this.ws === ws) this.closed(ev.code, ev.reason);
    };
    ws.onerror = () => {
      /* a close event follows */
    };
  }

  private onAuthOk(reply: OkReply): void {
    this.timers.clearTimeout(this.handshakeTimer);
    this._user = reply.user ?? '';
    this._node = reply.node ?? '';
    this.backoff.reset();
    this.setState('connected');
    if (typeof reply.expires_in === 'number') this.scheduleRefresh(reply.expires_in);
    for (const [name, rs] of this.rooms) this.sendJoin(name, rs);
    this.schedulePing();
    const who = { user: this._user, node: this._node };
    this.emit('connected', {
      ...who,
      url: this.wsUrl,
      ...(typeof reply.expires_in === 'number' ? { expiresIn: reply.expires_in } : {}),
    });
    for (const w of this.waitingConnect.splice(0)) w.resolve(who);
    this.pump();
  }

  /** Gives up the current socket at once (timeouts): as if it had closed with 1006. */
  private drop(reason: string): void {
    if (!this.ws) return;
    this.detach();
    this.closed(1006, reason);
  }

  /** The socket closed with `code`: settle requests, then reconnect or stop. */
  private closed(code: number, reason: string): void {
    this.detach();
    this.clearConnTimers();
    if (this.stopped) return;
    this.release('disconnected', `connection closed (${code})`);
    if (code === 4003) return this.stop('revoked', code, reason);
    if (FATAL_CODES.includes(code)) return this.stop('protocol', code, reason);
    let delay: number;
    if (code === 4001 && !this.guest) {
      const error = this.authError ?? new GatewayError('unauthorized', reason || 'unauthorized');
      if (!this.getToken) {
        this.emit('authFailed', { error, willRetry: false });
        return this.stop('unauthorized', code, reason);
      }
      this.tokenStale = true;
      this.emit('authFailed', { error, willRetry: true });
      delay = this.backoff.next();
    } else if (code === 1001 || code === 4008) {
      delay = Math.floor(this.random() * this.fastMs);
    } else if (code === 4029) {
      delay = this.limitedMs + this.backoff.next();
    } else {
      delay = this.backoff.next();
    }
    this.setState('disconnected');
    this.emit('disconnected', { code, reason, willReconnect: true, delayMs: delay });
    if (this.stopped) return;
    this.reconnectTimer = this.timers.setTimeout(() => void this.open(), delay);
  }

  /** Stops for good: state `closed`, everything pending rejected with `closed`. */
  private stop(cause: StopCause, code: number, reason: string): void {
    const wasStopped = this.stopped;
    this.stopped = true;
    this.gen++;
    this.timers.clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    this.detach(1000, 'client closed');
    this.clearConnTimers();
    const err = GatewayError.client('closed', `client stopped (${cause})`);
    const rooms = [...this.rooms.values()];
    this.rooms.clear();
    this.release('closed', err.message);
    for (const r of this.outbox.take(() => true)) this.settle(r, err);
    for (const rs of rooms) for (const w of rs.waiters.splice(0)) w(err);
    for (const w of this.waitingConnect.splice(0)) w.reject(err);
    if (this._state !== 'disconnected' && this._state !== 'closed' && !wasStopped) {
      this.emit('disconnected', { code, reason, willReconnect: false });
    }
    this.setState('closed');
    this.emit('closed', { cause, code, reason });
  }

  /** Settles what the connection held: in-flight sends go back to the outbox, the rest fail. */
  private release(code: ClientErrorCode, message: string): void {
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
    // Requests waiting for a room's re-join on this connection fail too.
    for (const r of this.outbox.take((r) => !r.keep)) this.settle(r, err);
    for (const rs of this.rooms.values()) rs.ready = rs.joining = false;
  }

  /** Forgets the current socket (its later events are ignored) and closes it. */
  private detach(code?: number, reason?: string): void {
    const ws = this.ws;
    if (!ws) return;
    this.ws = undefined;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => {}; // some implementations throw on an unhandled error event
    try {
      if (ws.readyState < 2) ws.close(code, reason);
    } catch {
      /* closing anyway */
    }
  }

  private clearConnTimers(): void {
    this.timers.clearTimeout(this.handshakeTimer);
    this.timers.clearTimeout(this.refreshTimer);
    this.timers.clearTimeout(this.pingTimer);
    this.handshakeTimer = this.refreshTimer = this.pingTimer = undefined;
    this.pinging = false;
  }

  private setState(s: ClientState): void {
    const previous = this._state;
    if (previous === s) return;
    this._state = s;
    this.emit('state', { state: s, previous });
  }

  // ------------------------------------------------------------ token refresh

  private scheduleRefresh(expiresIn: number): void {
    this.timers.clearTimeout(this.refreshTimer);
    if (!this.getToken || this.guest) return;
    // At 80% of the lifetime, at most 10 s before the end, at least 1 s from now.
    const delay = Math.max(1, Math.min(expiresIn * 0.8, expiresIn - 10)) * 1000;
    this.refreshTimer = this.timers.setTimeout(() => void this.refresh(), delay);
  }

  private async refresh(): Promise<void> {
    const ws = this.ws;
    const retry = (error: GatewayError) => {
      this.emit('authFailed', { error, willRetry: true });
      if (this.ws === ws) this.refreshTimer = this.timers.setTimeout(() => void this.refresh(), 5_000);
    };
    let token: string;
    try {
      token = await this.getToken!();
    } catch (e) {
      return retry(new GatewayError('unauthorized', `getToken failed: ${String(e)}`, { op: 'refresh' }));
    }
    if (this.ws !== ws || this._state !== 'connected') return;
    const r = this.request({ op: 'refresh', token }, undefined, false, (err, reply) => {
      if (err) {
        if (err.code !== 'disconnected' && err.code !== 'closed') retry(err);
        return;
      }
      this.token = token;
      const s = (reply as OkReply).expires_in;
      if (typeof s === 'number') this.scheduleRefresh(s);
    });
    this.arm(r);
    this.write(r);
  }

  // ------------------------------------------------------------ ping

  private schedulePing(): void {
    if (this.pingMs <= 0) return;
    this.timers.clearTimeout(this.pingTimer);
    let wait = this.lastRx + this.pingMs - this.timers.now();
    if (wait <= 0) wait = this.pingMs;
    this.pingTimer = this.timers.setTimeout(() => {
      if (this._state !== 'connected') return;
      if (!this.pinging && this.timers.now() - this.lastRx >= this.pingMs) {
        this.pinging = true;
        const r = this.request({ op: 'ping' }, undefined, false, (err) => {
          this.pinging = false;
          if (err?.code === 'timeout') this.drop('ping timeout');
        });
        this.arm(r);
        this.write(r);
      }
      this.schedulePing();
    }, wait);
  }

  // ------------------------------------------------------------ frames in

  private onFrame(data: unknown): void {
    this.lastRx = this.timers.now();
    if (typeof data !== 'string') return;
    let f: ServerFrame | UnknownFrame;
    try {
      f = JSON.parse(data);
    } catch {
      return;
    }
    if (!f || typeof f !== 'object' || typeof f.op !== 'string') return;
    const id = (f as { id?: unknown }).id;
    if (typeof id === 'number') {
      const r = this.inflight.get(id);
      if (r) {
        this.inflight.delete(id);
        if (f.op === 'error') {
          const e = f as ErrorFrame;
          const room = 'room' in r.frame ? r.frame.room : undefined;
          this.settle(r, new GatewayError(e.code as GatewayError['code'], e.message, { op: r.frame.op, room }));
        } else this.settle(r, null, f as ServerFrame);
        return;
      }
      if (f.op !== 'error') return; // a late reply to a request that timed out
    }
    const op = f.op;
    if (ROOM_EVENTS.includes(op)) {
      const ev = f as RoomEvent;
      if (typeof ev.room === 'string' && typeof ev.msg === 'string') {
        const last = this.seen.get(ev.room);
        if (last !== undefined && compareIds(ev.msg, last) <= 0) return; // replayed twice
        this.seen.set(ev.room, ev.msg);
      }
      this.emit(op as RoomEvent['op'], ev as never);
      this.emit('roomEvent', ev);
    } else if (PASS_EVENTS.includes(op)) {
      this.emit(op as 'joined', f as never);
    } else if (op === 'removed') {
      const ev = f as RemovedEvent;
      const rs = this.rooms.get(ev.room);
      if (rs) {
        this.rooms.delete(ev.room);
        const err = new GatewayError('forbidden', `removed from ${ev.room} (${ev.reason})`, { room: ev.room });
        for (const w of rs.waiters.splice(0)) w(err);
        for (const r of this.outbox.take((r) => r.room === ev.room)) this.settle(r, err);
      }
      this.emit('removed', ev);
    } else if (op === 'error') {
      const e = f as ErrorFrame;
      const err = new GatewayError(e.code as GatewayError['code'], e.message);
      if (err.code === 'unauthorized') this.authError = err; // "token expired": a 4001 follows
      this.emit('error', err);
    } else if (op !== 'ok' && op !== 'history' && op !== 'presence' && op !== 'receipts' && op !== 'pong') {
      this.emit('unknown', f as UnknownFrame);
    }
  }

  // ------------------------------------------------------------ requests out

  private request(
    frame: ClientFrame,
    room: string | undefined,
    keep: boolean,
    done: Request['done'],
  ): Request {
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

  private settle(r: Request, err: GatewayError | null, reply?: ServerFrame): void {
    this.timers.clearTimeout(r.timer);
    r.timer = undefined;
    r.done(err, reply);
  }

  /** Starts `r`'s reply timeout. */
  private arm(r: Request): void {
    this.timers.clearTimeout(r.timer);
    r.timer = this.timers.setTimeout(() => {
      r.timer = undefined;
      if (r.id) this.inflight.delete(r.id);
      this.outbox.remove(r);
      r.id = 0;
      const room = 'room' in r.frame ? r.frame.room : undefined;
      r.done(GatewayError.client('timeout', `no reply to ${r.frame.op} within ${this.timeoutMs} ms`, r.frame.op, room));
    }, this.timeoutMs);
  }

  /** Writes `r` on the socket, in flight under a new id. */
  private write(r: Request): void {
    const ws = this.ws;
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

  /** Writes every waiting request whose room is ready, in call order. */
  private pump(): void {
    if (this._state !== 'connected' || !this.ws) return;
    const ready = this.outbox.take((r) => {
      const rs = r.room === undefined ? undefined : this.rooms.get(r.room);
      return !rs || rs.ready;
    });
    for (const r of ready) this.write(r);
  }

  /** Queues an application request and returns its reply. */
  private call<T>(frame: ClientFrame, room: string | undefined, map: (reply: ServerFrame) => T, keep = false): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const r = this.request(frame, room, keep, (err, reply) => (err ? reject(err) : resolve(map(reply!))));
      if (this._state === 'closed') return r.done(GatewayError.client('closed', 'client is closed', frame.op, room));
      if (!keep) {
        if (this._state !== 'connected' && this._state !== 'connecting') {
          return r.done(GatewayError.client('disconnected', 'not connected', frame.op, room));
        }
        this.arm(r);
      }
      this.outbox.add(r);
      this.pump();
    });
  }

  private sendJoin(name: string, rs: RoomState): void {
    const since = this.seen.get(name);
    rs.joining = true;
    const frame: ClientFrame = { op: 'join', room: name, ...(since !== undefined ? { since } : {}) };
    const r = this.request(frame, undefined, false, (err, reply) => {
      if (this.rooms.get(name) !== rs) return; // left meanwhile
      rs.joining = false;
      if (err) {
        if (err.code === 'disconnected') return; // re-joined at the next connection
        this.rooms.delete(name);
        for (const w of rs.waiters.splice(0)) w(err);
        for (const r of this.outbox.take((r) => r.room === name)) this.settle(r, err);
        this.emit('joinFailed', { room: name, error: err });
        return;
      }
      const ok = reply as OkReply;
      const result: JoinResult = { recovered: ok.recovered !== false, ...(ok.read ? { read: ok.read } : {}) };
      rs.ready = true;
      rs.result = result;
      if (!result.recovered) this.emit('gap', { room: name, ...(since !== undefined ? { since } : {}) });
      else if (since === undefined && rs.joinedBefore) this.emit('gap', { room: name });
      rs.joinedBefore = true;
      for (const w of rs.waiters.splice(0)) w(null, reply);
      this.pump();
    });
    this.arm(r);
    this.write(r);
  }

  // ------------------------------------------------------------ API

  /**
   * Joins `room` and keeps it joined across reconnects. Re-joins send
   * `since` = the last room-event id seen in it, so the server replays what
   * was missed (delivered as ordinary events before this resolves).
   * Callable while disconnected: resolves once joined. `since` overrides
   * the last seen id (e.g. one the application stored). Already joined:
   * resolves with the first result.
   */
  join(room: string, options: { since?: MsgId } = {}): Promise<JoinResult> {
    if (this._state === 'closed') return Promise.reject(GatewayError.client('closed', 'client is closed', 'join', room));
    if (options.since !== undefined) this.seen.set(room, options.since);
    let rs = this.rooms.get(room);
    if (rs?.result && (rs.ready || !rs.joining)) return Promise.resolve(rs.result);
    return new Promise<JoinResult>((resolve, reject) => {
      if (!rs) {
        rs = { ready: false, joining: false, joinedBefore: false, result: undefined, waiters: [] };
        this.rooms.set(room, rs);
      }
      rs.waiters.push((err) => (err ? reject(err) : resolve(rs!.result!)));
      if (this._state === 'connected' && !rs.joining && !rs.ready) this.sendJoin(room, rs);
    });
  }

  /**
   * Leaves `room`: it is no longer re-joined; its pending `join` promises
   * and queued requests (sends included) are rejected with `cancelled`.
   * Resolves at once when not connected.
   */
  leave(room: string): Promise<void> {
    const rs = this.rooms.get(room);
    if (!rs) return Promise.resolve();
    this.rooms.delete(room);
    const err = GatewayError.client('cancelled', `left ${room}`, 'leave', room);
    for (const w of rs.waiters.splice(0)) w(err);
    for (const r of this.outbox.take((r) => r.room === room)) this.settle(r, err);
    if (this._state !== 'connected' || (!rs.ready && !rs.joining)) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const r = this.request({ op: 'leave', room }, undefined, false, () => resolve());
      this.arm(r);
      this.write(r);
    });
  }

  /**
   * Sends a message. Every send carries a nonce. A non-ephemeral send made
   * while disconnected, or whose reply was lost with the connection, waits
   * in the outbox and is sent again after reconnect and re-join with the
   * same nonce (the server answers a repeat with `duplicate: true`); the
   * promise resolves once. Ephemeral sends are rejected with `disconnected`
   * instead. The reply timeout runs from each write.
   */
  send(room: string, body: Json, options: SendOptions = {}): Promise<SendResult> {
    const nonce = options.nonce ?? makeNonce(this.random);
    const frame: ClientFrame = {
      op: 'send',
      room,
      body,
      nonce,
      ...(options.ephemeral ? { ephemeral: true } : {}),
      ...(options.replyTo !== undefined ? { reply_to: options.replyTo } : {}),
    };
    return this.call(
      frame,
      room,
      (reply) => {
        const ok = reply as OkReply;
        return { room, msg: ok.msg!, ts: ok.ts!, duplicate: ok.duplicate === true, nonce };
      },
      !options.ephemeral,
    );
  }

  /** A page of `room`'s history, ascending by id. Does not need a join. */
  async history(room: string, options: HistoryOptions = {}): Promise<HistoryMessage[]> {
    const frame: ClientFrame = { op: 'history', room };
    if (options.before !== undefined) frame.before = options.before;
    if (options.after !== undefined) frame.after = options.after;
    if (options.limit !== undefined) frame.limit = options.limit;
    const messages = await this.call(frame, undefined, (r) => (r as HistoryReply).messages ?? []);
    const newest = messages.length ? messages[messages.length - 1]!.msg : undefined;
    const last = maxId(this.seen.get(room), newest);
    if (last !== undefined) this.seen.set(room, last);
    return messages;
  }

  /** The users in `room`. */
  presence(room: string): Promise<string[]> {
    return this.call({ op: 'presence', room }, undefined, (r) => (r as PresenceReply).users ?? []);
  }

  /** Tells `room` this user is typing (no reply). False when not sent (not connected, or room not joined yet). */
  typing(room: string): boolean {
    const rs = this.rooms.get(room);
    if (this._state !== 'connected' || !this.ws || (rs && !rs.ready)) return false;
    try {
      this.ws.send(JSON.stringify({ op: 'typing', room }));
      return true;
    } catch {
      return false;
    }
  }

  /** (1.1) Replaces the body of one of this user's messages. */
  edit(room: string, msg: MsgId, body: Json): Promise<ChangeResult> {
    return this.call({ op: 'edit', room, msg, body }, room, changeResult);
  }

  /** (1.1) Deletes a message (the author's, or any as a moderator). */
  delete(room: string, msg: MsgId): Promise<ChangeResult> {
    return this.call({ op: 'delete', room, msg }, room, changeResult);
  }

  /** (1.1) Adds reaction `key`; `msg` absent in the result when this user held it already. */
  react(room: string, msg: MsgId, key: string): Promise<ChangeResult> {
    return this.call({ op: 'react', room, msg, key }, room, changeResult);
  }

  /** (1.1) Removes reaction `key`. */
  unreact(room: string, msg: MsgId, key: string): Promise<ChangeResult> {
    return this.call({ op: 'unreact', room, msg, key }, room, changeResult);
  }

  /** (1.1) Moves this user's read marker in `room` forward to `msg`. */
  read(room: string, msg: MsgId): Promise<void> {
    return this.call({ op: 'read', room, msg }, room, () => undefined);
  }

  /** (1.1) Read markers of `room`'s members: `{ user: id }`. */
  receipts(room: string): Promise<Record<string, MsgId>> {
    return this.call({ op: 'receipts', room }, room, (r) => (r as ReceiptsReply).read ?? {});
  }

  /** Round trip to the server, ms. */
  ping(): Promise<number> {
    const t0 = this.timers.now();
    return this.call({ op: 'ping' }, undefined, () => this.timers.now() - t0);
  }
}

function changeResult(reply: ServerFrame): ChangeResult {
  const ok = reply as OkReply;
  return {
    room: ok.room ?? '',
    ...(ok.msg !== undefined ? { msg: ok.msg } : {}),
    ...(ok.ts !== undefined ? { ts: ok.ts } : {}),
  };
}

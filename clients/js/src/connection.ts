import type { ChatClientOptions, ClientState, Emit, StopCause } from './api.js';
import { Backoff } from './backoff.js';
import { GatewayError } from './errors.js';
import { globalWebSocket, type Timers, type WebSocketConstructor, type WebSocketLike } from './platform.js';
import type { Requests } from './requests.js';
import type { ClientErrorCode, OkReply } from './types.js';

/** What the connection asks of the rest of the client. */
export interface ConnectionHooks {
  /** A frame arrived on the current socket. */
  frame(data: unknown): void;
  /** Authenticated: re-join the rooms (before the `connected` event). */
  rejoin(): void;
  /** Write the waiting requests (after the `connected` event). */
  pump(): void;
  /** The socket is gone (`disconnected`), or the client stops (`closed`): settle what it held. */
  release(code: ClientErrorCode, message: string): void;
  /** Stopped for good: reject everything still waiting with `err`. */
  stop(err: GatewayError): void;
}

type Who = { user: string; node: string };

const FATAL_CODES = [1002, 1003, 1007, 1008, 1009];

/**
 * The connection's lifecycle: one socket at a time, opened and
 * authenticated by first frame, given up on a handshake or ping timeout,
 * and re-opened by the reconnect policy of its close code (backoff with
 * full jitter, fast after 1001/4008, slow after 4029, a new token after
 * 4001, stop after 4003 and protocol errors); the token refreshed before
 * it expires. The state, user and node are the client's.
 */
export class Connection {
  private readonly urls: string[];
  private readonly WS: WebSocketConstructor;
  private readonly getToken: (() => Promise<string>) | undefined;
  private readonly guest: boolean;
  private readonly backoff: Backoff;
  private readonly fastMs: number;
  private readonly limitedMs: number;
  private readonly pingMs: number;

  private token: string | undefined;
  private tokenStale = false;
  state: ClientState = 'disconnected';
  user: string | undefined;
  node: string | undefined;
  url = '';
  private stopped = true;
  /** Counts starts and stops: an `open` that awaited `getToken` across one gives up. */
  private gen = 0;
  private urlIndex = 0;
  private ws: WebSocketLike | undefined;
  private reconnectTimer: unknown;
  private handshakeTimer: unknown;
  private refreshTimer: unknown;
  private pingTimer: unknown;
  private lastRx = 0;
  private pinging = false;
  /** The server's refusal on this socket: the `auth` reply's error, or an unsolicited `unauthorized` ("token expired"). */
  private authError: GatewayError | undefined;
  private waitingConnect: Array<{ resolve(v: Who): void; reject(e: GatewayError): void }> = [];

  constructor(
    options: ChatClientOptions,
    private readonly reqs: Requests,
    private readonly emit: Emit,
    private readonly hooks: ConnectionHooks,
    private readonly timers: Timers,
    private readonly random: () => number,
  ) {
    this.urls = typeof options.urls === 'string' ? [options.urls] : options.urls.slice();
    if (this.urls.length === 0) throw new TypeError('ChatClient: no url');
    const WS = options.WebSocket ?? globalWebSocket();
    if (!WS) throw new TypeError('ChatClient: no WebSocket here; pass options.WebSocket (e.g. the ws package)');
    this.WS = WS;
    this.token = options.token;
    this.getToken = options.getToken;
    this.guest = options.guest ?? (options.token === undefined && options.getToken === undefined);
    this.backoff = new Backoff(options.backoff, random);
    this.fastMs = options.fastReconnectMs ?? 250;
    this.limitedMs = options.rateLimitedDelayMs ?? 5_000;
    this.pingMs = options.pingIntervalMs ?? 30_000;
  }

  /** See `ChatClient.connect`. */
  connect(): Promise<Who> {
    if (this.state === 'connected') return Promise.resolve({ user: this.user!, node: this.node! });
    const p = new Promise<Who>((resolve, reject) => this.waitingConnect.push({ resolve, reject }));
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

  /** See `ChatClient.close`. */
  close(): void {
    if (this.stopped && this.state === 'closed') return;
    this.stop('client', 1000, 'closed by client');
  }

  /** An unsolicited `unauthorized` error ("token expired"): the 4001 that follows is a refusal. */
  refused(err: GatewayError): void {
    this.authError = err;
  }

  private async open(): Promise<void> {
    this.reconnectTimer = undefined;
    this.setState('connecting');
    const url = this.urls[this.urlIndex++ % this.urls.length]!;
    this.url = url;
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
    this.ws = this.reqs.socket = ws;
    this.authError = undefined;
    this.handshakeTimer = this.timers.setTimeout(() => this.drop('open/auth timeout'), this.reqs.timeoutMs);
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.lastRx = this.timers.now();
      const auth = this.reqs.create({ op: 'auth', ...(token !== undefined ? { token } : {}) }, undefined, false, (err, reply) =>
        err ? err.source === 'server' && (this.authError = err) : this.onAuthOk(reply as OkReply),
      );
      this.reqs.write(auth);
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.lastRx = this.timers.now();
      this.hooks.frame(ev.data);
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
    this.user = reply.user ?? '';
    this.node = reply.node ?? '';
    this.backoff.reset();
    this.setState('connected');
    if (typeof reply.expires_in === 'number') this.scheduleRefresh(reply.expires_in);
    this.hooks.rejoin();
    this.schedulePing();
    const who = { user: this.user, node: this.node };
    this.emit('connected', {
      ...who,
      url: this.url,
      ...(typeof reply.expires_in === 'number' ? { expiresIn: reply.expires_in } : {}),
    });
    for (const w of this.waitingConnect.splice(0)) w.resolve(who);
    this.hooks.pump();
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
    this.hooks.release('disconnected', `connection closed (${code})`);
    if (code === 4003) return this.stop('revoked', code, reason);
    if (FATAL_CODES.includes(code)) return this.stop('protocol', code, reason);
    let delay: number;
    const refusal = code === 4001 ? this.refusal(reason) : undefined;
    if (refusal) {
      const willRetry = !this.guest && this.getToken !== undefined;
      this.emit('authFailed', { error: refusal, willRetry });
      if (!willRetry) return this.stop('unauthorized', code, reason);
      this.tokenStale = true;
      delay = this.backoff.next();
    } else if (code === 1001 || code === 4008) {
      delay = Math.floor(this.random() * this.fastMs);
    } else if (code === 4029) {
      delay = this.limitedMs + this.backoff.next();
    } else {
      delay = this.backoff.next(); // a guest's 4001 without a refusal: an auth timeout
    }
    this.setState('disconnected');
    this.emit('disconnected', { code, reason, willReconnect: true, delayMs: delay });
    if (this.stopped) return;
    this.reconnectTimer = this.timers.setTimeout(() => void this.open(), delay);
  }

  /**
   * Why a 4001 came, when the server refused the credentials: with a
   * token, always; for a guest, only when `auth` itself was answered
   * `unauthorized` (a node that serves no guests), not after an auth timeout.
   */
  private refusal(reason: string): GatewayError | undefined {
    const e = this.authError;
    if (this.guest) return e?.op === 'auth' && e.code === 'unauthorized' ? e : undefined;
    return e ?? new GatewayError('unauthorized', reason || 'unauthorized');
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
    this.hooks.stop(err);
    for (const w of this.waitingConnect.splice(0)) w.reject(err);
    if (this.state !== 'disconnected' && this.state !== 'closed' && !wasStopped) {
      this.emit('disconnected', { code, reason, willReconnect: false });
    }
    this.setState('closed');
    this.emit('closed', { cause, code, reason });
  }

  /** Forgets the current socket (its later events are ignored) and closes it. */
  private detach(code?: number, reason?: string): void {
    const ws = this.ws;
    if (!ws) return;
    this.ws = this.reqs.socket = undefined;
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
    const previous = this.state;
    if (previous === s) return;
    this.state = s;
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
    if (this.ws !== ws || this.state !== 'connected') return;
    this.reqs.send(
      this.reqs.create({ op: 'refresh', token }, undefined, false, (err, reply) => {
        if (err) {
          if (err.code !== 'disconnected' && err.code !== 'closed') retry(err);
          return;
        }
        this.token = token;
        const s = (reply as OkReply).expires_in;
        if (typeof s === 'number') this.scheduleRefresh(s);
      }),
    );
  }

  // ------------------------------------------------------------ ping

  private schedulePing(): void {
    if (this.pingMs <= 0) return;
    this.timers.clearTimeout(this.pingTimer);
    let wait = this.lastRx + this.pingMs - this.timers.now();
    if (wait <= 0) wait = this.pingMs;
    this.pingTimer = this.timers.setTimeout(() => {
      if (this.state !== 'connected') return;
      if (!this.pinging && this.timers.now() - this.lastRx >= this.pingMs) {
        this.pinging = true;
        this.reqs.send(
          this.reqs.create({ op: 'ping' }, undefined, false, (err) => {
            this.pinging = false;
            if (err?.code === 'timeout') this.drop('ping timeout');
          }),
        );
      }
      this.schedulePing();
    }, wait);
  }
}

/**
 * The public types of `ChatClient`: its options, the results of its
 * requests, and its events.
 */
import type { BackoffOptions } from './backoff.js';
import type { GatewayError } from './errors.js';
import type { Timers, WebSocketConstructor } from './platform.js';
import type {
  DeleteEvent,
  EditEvent,
  MsgEvent,
  MsgId,
  PresenceEvent,
  ReactEvent,
  ReadEvent,
  RemovedEvent,
  RoomEvent,
  TypingEvent,
  UnknownFrame,
} from './types.js';

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
  /** 4001 after the server refused the credentials: a fixed `token` and no `getToken`, or a guest on a node that serves no guests. */
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
  /** The server refused the token (auth, refresh, or expiry), or a guest's auth. `willRetry`: a new token is fetched with `getToken`; false: the client stops (`closed`, cause `unauthorized`). */
  authFailed: { error: GatewayError; willRetry: boolean };
}

/** How the client's parts emit its events (internal). */
export type Emit = <K extends keyof ChatClientEvents>(name: K, payload: ChatClientEvents[K]) => void;

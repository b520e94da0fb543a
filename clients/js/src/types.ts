/**
 * Every frame of the chat-gateway client protocol v1.1 (docs/PROTOCOL.md),
 * as TypeScript types. Fields marked "(1.1)" are additions of v1.1.
 *
 * Message ids are 64-bit integers sent as decimal strings: keep them as
 * strings (see `ids.ts`), never convert them to `number`.
 */

/** A message id (or event id): a 64-bit integer as a decimal string. */
export type MsgId = string;

/** Any JSON value: message bodies are opaque to the server. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** The error codes the server sends in `error` frames. */
export type ServerErrorCode =
  | 'bad_request'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'rate_limited'
  | 'too_large'
  | 'unavailable'
  | 'internal';

/** The error codes the client raises itself (never sent by the server). */
export type ClientErrorCode =
  /** The client was closed (by `close()`, or stopped for good) before the request was answered. */
  | 'closed'
  /** No reply within `requestTimeoutMs`. */
  | 'timeout'
  /** Not connected, or the connection dropped before the reply (for requests that are not retried). */
  | 'disconnected'
  /** Superseded by the application (e.g. `leave()` while that room's `join()` was pending). */
  | 'cancelled';

/** Every code a `GatewayError` can carry. */
export type ErrorCode = ServerErrorCode | ClientErrorCode;

/** The WebSocket close codes the protocol defines. */
export const CloseCodes = {
  /** Node draining: reconnect at once and resume. */
  GOING_AWAY: 1001,
  /** Repeated bad frames: a client bug. */
  POLICY_VIOLATION: 1008,
  /** Frame too big: a client bug. */
  TOO_BIG: 1009,
  /** Unauthorized, auth timeout, or token expired: get a new token. */
  UNAUTHORIZED: 4001,
  /** (1.1) Disconnected by an operator or token revoked: do not reconnect. */
  DISCONNECTED: 4003,
  /** Slow consumer: reconnect and resume. */
  SLOW_CONSUMER: 4008,
  /** Rate limited too long: back off. */
  RATE_LIMITED: 4029,
} as const;

/** Folded reactions of a message in `history`: `{ "👍": { count: 2, me: true } }`. */
export type Reactions = Record<string, { count: number; me: boolean }>;

// ---------------------------------------------------------------- events

/**
 * `msg` event: a message in a room. Live events carry `body`; `history`
 * entries and `join` replays carry the message's current state: (1.1)
 * `edited` (the latest edit's ts) and the latest `body`, or `deleted: true`
 * and no `body`; history entries also carry folded `reactions`.
 */
export interface MsgEvent {
  op: 'msg';
  room: string;
  /** The message id. */
  msg: MsgId;
  from: string;
  /** Server time, Unix ms. */
  ts: number;
  body?: Json;
  /** (1.1) The message this one replies to. */
  reply_to?: MsgId;
  /** (1.1) ts of the latest edit. */
  edited?: number;
  /** (1.1) The message was deleted (no `body`). */
  deleted?: true;
  /** (1.1) Folded reactions (history entries only). */
  reactions?: Reactions;
}

/** A `history` entry: a message in its current state. */
export type HistoryMessage = MsgEvent;

interface ChangeBase {
  room: string;
  /** The event's own id, in the room's order. */
  msg: MsgId;
  /** The message the event applies to. */
  target: MsgId;
  from: string;
  ts: number;
}

/** (1.1) `edit` event: `target` now has `body`. */
export interface EditEvent extends ChangeBase {
  op: 'edit';
  body: Json;
}

/** (1.1) `delete` event: `target` was deleted. */
export interface DeleteEvent extends ChangeBase {
  op: 'delete';
}

/** (1.1) `react` / `unreact` event: `from` added/removed reaction `key` on `target`. */
export interface ReactEvent extends ChangeBase {
  op: 'react' | 'unreact';
  key: string;
}

/** The events that have an id in a room's order (replayed by `join` with `since`). */
export type RoomEvent = MsgEvent | EditEvent | DeleteEvent | ReactEvent;

/** `joined` / `left` presence changes. */
export interface PresenceEvent {
  op: 'joined' | 'left';
  room: string;
  user: string;
}

/** `typing` event (ephemeral). */
export interface TypingEvent {
  op: 'typing';
  room: string;
  user: string;
}

/** (1.1) `read` event: `user`'s read marker moved to `msg` (ephemeral, coalesced). */
export interface ReadEvent {
  op: 'read';
  room: string;
  user: string;
  msg: MsgId;
}

/** (1.1) `removed` event: this connection is no longer in `room`. */
export interface RemovedEvent {
  op: 'removed';
  room: string;
  reason: 'kicked' | 'banned' | 'access' | (string & {});
}

/** `error` frame. `id` echoes the request's when it answers one. */
export interface ErrorFrame {
  op: 'error';
  id?: number;
  code: ServerErrorCode | (string & {});
  message: string;
}

/** Any server frame with an `op` this client does not know (v1 clients must ignore them; this one surfaces them). */
export interface UnknownFrame {
  op: string;
  [key: string]: unknown;
}

// ---------------------------------------------------------------- replies

/** `ok` reply (fields depend on the request). */
export interface OkReply {
  op: 'ok';
  id?: number;
  room?: string;
  user?: string;
  node?: string;
  msg?: MsgId;
  ts?: number;
  recovered?: boolean;
  read?: MsgId;
  duplicate?: boolean;
  expires_in?: number;
}

/** `history` reply. */
export interface HistoryReply {
  op: 'history';
  id?: number;
  room: string;
  messages: HistoryMessage[];
}

/** `presence` reply. */
export interface PresenceReply {
  op: 'presence';
  id?: number;
  room: string;
  users: string[];
}

/** (1.1) `receipts` reply. */
export interface ReceiptsReply {
  op: 'receipts';
  id?: number;
  room: string;
  read: Record<string, MsgId>;
}

/** `pong` reply. */
export interface PongReply {
  op: 'pong';
  id?: number;
}

/** Every frame the server sends. */
export type ServerFrame =
  | RoomEvent
  | PresenceEvent
  | TypingEvent
  | ReadEvent
  | RemovedEvent
  | ErrorFrame
  | OkReply
  | HistoryReply
  | PresenceReply
  | ReceiptsReply
  | PongReply;

// ---------------------------------------------------------------- requests

/** Every frame the client sends (`id` is added by the client). */
export type ClientFrame =
  | { op: 'auth'; token?: string }
  | { op: 'refresh'; token: string }
  | { op: 'join'; room: string; since?: MsgId }
  | { op: 'leave'; room: string }
  | { op: 'send'; room: string; body: Json; ephemeral?: boolean; nonce?: string; reply_to?: MsgId }
  | { op: 'history'; room: string; before?: MsgId; after?: MsgId; limit?: number }
  | { op: 'presence'; room: string }
  | { op: 'typing'; room: string }
  | { op: 'ping' }
  | { op: 'edit'; room: string; msg: MsgId; body: Json }
  | { op: 'delete'; room: string; msg: MsgId }
  | { op: 'react' | 'unreact'; room: string; msg: MsgId; key: string }
  | { op: 'read'; room: string; msg: MsgId }
  | { op: 'receipts'; room: string };

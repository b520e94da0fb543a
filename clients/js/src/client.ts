import type {
  ChangeResult,
  ChatClientEvents,
  ChatClientOptions,
  ClientState,
  HistoryOptions,
  JoinResult,
  SendOptions,
  SendResult,
} from './api.js';
import { Connection } from './connection.js';
import { Emitter } from './emitter.js';
import { GatewayError } from './errors.js';
import { makeNonce } from './ids.js';
import { realTimers, type Timers } from './platform.js';
import { Requests } from './requests.js';
import { Rooms } from './rooms.js';
import type {
  ClientFrame,
  ErrorFrame,
  HistoryMessage,
  HistoryReply,
  Json,
  MsgId,
  OkReply,
  PresenceReply,
  ReceiptsReply,
  RemovedEvent,
  RoomEvent,
  ServerFrame,
  UnknownFrame,
} from './types.js';

const ROOM_EVENTS = ['msg', 'edit', 'delete', 'react', 'unreact'];
const PASS_EVENTS = ['joined', 'left', 'typing', 'read'];

/**
 * A client of the chat gateway: one WebSocket, re-opened by itself, with
 * rooms re-joined from the last seen id and sends kept in an outbox until
 * acknowledged. See README.md for every behaviour.
 *
 * This class is the public face and the frame dispatcher; the work is done
 * by its parts: `Connection` (lifecycle, reconnect policy, token refresh,
 * ping), `Requests` (outbox, in-flight table, timeouts) and `Rooms`
 * (joined rooms, last seen ids, re-joins, gaps).
 */
export class ChatClient extends Emitter<ChatClientEvents> {
  private readonly timers: Timers;
  private readonly random: () => number;
  private readonly reqs: Requests;
  private readonly rooms: Rooms;
  private readonly conn: Connection;

  constructor(options: ChatClientOptions) {
    super();
    this.timers = options.timers ?? realTimers;
    this.random = options.random ?? Math.random;
    const emit = this.emit.bind(this);
    this.reqs = new Requests(this.timers, options.requestTimeoutMs ?? 10_000);
    this.rooms = new Rooms(this.reqs, emit, () => this.pump());
    this.conn = new Connection(
      options,
      this.reqs,
      emit,
      {
        frame: (data) => this.onFrame(data),
        rejoin: () => this.rooms.rejoin(),
        pump: () => this.pump(),
        release: (code, message) => {
          this.reqs.release(code, message);
          this.rooms.reset();
        },
        stop: (err) => {
          this.rooms.clear(err);
          this.reqs.release('closed', err.message);
          this.reqs.reject(() => true, err);
        },
      },
      this.timers,
      this.random,
    );
  }

  // ------------------------------------------------------------ getters

  /** `connecting`, `connected`, `disconnected` or `closed`. */
  get state(): ClientState {
    return this.conn.state;
  }
  /** The authenticated user id (a guest's changes at each connection), once connected. */
  get user(): string | undefined {
    return this.conn.user;
  }
  /** The gateway node of the current connection. */
  get node(): string | undefined {
    return this.conn.node;
  }
  /** The URL of the current (or last) socket. */
  get url(): string {
    return this.conn.url;
  }
  /** Rooms joined through this client (re-joined after each reconnect). */
  get joinedRooms(): string[] {
    return this.rooms.names;
  }
  /** Non-ephemeral sends not yet acknowledged (waiting or in flight). */
  get pendingSends(): number {
    return this.reqs.pendingSends;
  }
  /** The last room-event id seen in `room` (what a re-join sends as `since`). History pages do not move it. */
  lastSeen(room: string): MsgId | undefined {
    return this.rooms.lastSeen(room);
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
    return this.conn.connect();
  }

  /**
   * Closes the connection and stops reconnecting. Every pending request and
   * queued send is rejected with `closed`; joined rooms are forgotten (the
   * last seen ids are kept, so a later `join` resumes). State `closed`.
   */
  close(): void {
    this.conn.close();
  }

  // ------------------------------------------------------------ frames in

  private onFrame(data: unknown): void {
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
      if (this.reqs.answer(id, f)) return;
      if (f.op !== 'error') return; // a late reply to a request that timed out
    }
    const op = f.op;
    if (ROOM_EVENTS.includes(op)) {
      const ev = f as RoomEvent;
      if (!this.rooms.accept(ev)) return; // replayed twice
      this.emit(op as RoomEvent['op'], ev as never);
      this.emit('roomEvent', ev);
    } else if (PASS_EVENTS.includes(op)) {
      this.emit(op as 'joined', f as never);
    } else if (op === 'removed') {
      this.rooms.removed(f as RemovedEvent);
      this.emit('removed', f as RemovedEvent);
    } else if (op === 'error') {
      const e = f as ErrorFrame;
      const err = new GatewayError(e.code as GatewayError['code'], e.message);
      if (err.code === 'unauthorized') this.conn.refused(err); // "token expired": a 4001 follows
      this.emit('error', err);
    } else if (op !== 'ok' && op !== 'history' && op !== 'presence' && op !== 'receipts' && op !== 'pong') {
      this.emit('unknown', f as UnknownFrame);
    }
  }

  // ------------------------------------------------------------ requests out

  /** Writes every waiting request whose room is ready, in call order. */
  private pump(): void {
    if (this.state === 'connected') this.reqs.flush((r) => this.rooms.isReady(r.room));
  }

  /** Queues an application request and returns its reply. */
  private call<T>(frame: ClientFrame, room: string | undefined, map: (reply: ServerFrame) => T, keep = false): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const r = this.reqs.create(frame, room, keep, (err, reply) => (err ? reject(err) : resolve(map(reply!))));
      const state = this.state;
      if (state === 'closed') return r.done(GatewayError.client('closed', 'client is closed', frame.op, room));
      if (!keep) {
        if (state !== 'connected' && state !== 'connecting') {
          return r.done(GatewayError.client('disconnected', 'not connected', frame.op, room));
        }
        this.reqs.arm(r);
      }
      this.reqs.queue(r);
      this.pump();
    });
  }

  // ------------------------------------------------------------ API

  /**
   * Joins `room` and keeps it joined across reconnects. Re-joins send
   * `since` = the last room-event id seen in it, so the server replays what
   * was missed (delivered as ordinary events before this resolves).
   * Callable while disconnected: resolves once joined. `since` overrides
   * the last seen id (e.g. one the application stored). Already joined on
   * the current connection: resolves at once with that join's result;
   * otherwise with the result of the room's next (re-)join.
   */
  join(room: string, options: { since?: MsgId } = {}): Promise<JoinResult> {
    if (this.state === 'closed') return Promise.reject(GatewayError.client('closed', 'client is closed', 'join', room));
    return this.rooms.join(room, options.since, this.state === 'connected');
  }

  /**
   * Leaves `room`: it is no longer re-joined; its pending `join` promises
   * and queued requests (sends included) are rejected with `cancelled`.
   * Resolves at once when not connected.
   */
  leave(room: string): Promise<void> {
    if (!this.rooms.leave(room) || this.state !== 'connected') return Promise.resolve();
    return new Promise<void>((resolve) => this.reqs.send(this.reqs.create({ op: 'leave', room }, undefined, false, () => resolve())));
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

  /**
   * A page of `room`'s history, ascending by id. Does not need a join.
   * Does not move `lastSeen(room)`: only room events do.
   */
  history(room: string, options: HistoryOptions = {}): Promise<HistoryMessage[]> {
    const frame: ClientFrame = { op: 'history', room };
    if (options.before !== undefined) frame.before = options.before;
    if (options.after !== undefined) frame.after = options.after;
    if (options.limit !== undefined) frame.limit = options.limit;
    // The page does not move `lastSeen(room)`: see `Rooms`.
    return this.call(frame, undefined, (r) => (r as HistoryReply).messages ?? []);
  }

  /** The users in `room`. */
  presence(room: string): Promise<string[]> {
    return this.call({ op: 'presence', room }, undefined, (r) => (r as PresenceReply).users ?? []);
  }

  /** Tells `room` this user is typing (no reply). False when not sent (not connected, or room not joined yet). */
  typing(room: string): boolean {
    return this.state === 'connected' && this.rooms.isReady(room) && this.reqs.post({ op: 'typing', room });
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

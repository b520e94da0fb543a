import type { Emit, JoinResult } from './api.js';
import { GatewayError } from './errors.js';
import { compareIds } from './ids.js';
import type { Request } from './outbox.js';
import type { Requests } from './requests.js';
import type { ClientFrame, MsgId, OkReply, RemovedEvent, RoomEvent } from './types.js';

interface RoomState {
  /** Joined on the current connection: its `join` was answered `ok`. */
  ready: boolean;
  /** A `join` is in flight on the current connection. */
  joining: boolean;
  /** Joined on an earlier connection (a re-join with no id to resume from is then a gap). */
  joinedBefore: boolean;
  /** The result of the latest answered `join`. */
  result: JoinResult | undefined;
  /** `join()` calls waiting for the next answer. */
  waiters: Array<Request['done']>;
}

/**
 * The rooms joined through the client, and resume: the last room-event id
 * seen in each room, re-joins with `since` after each authentication,
 * replayed duplicates dropped, gaps reported.
 *
 * Only room events (live or replayed: `msg`, `edit`, `delete`, `react`,
 * `unreact`) move the last seen id. History pages do not: they fold
 * reactions without telling which events they include, so a `since` taken
 * from a page would replay reactions the page already counted.
 */
export class Rooms {
  private readonly rooms = new Map<string, RoomState>();
  private readonly seen = new Map<string, MsgId>();

  constructor(
    private readonly reqs: Requests,
    private readonly emit: Emit,
    /** Called when a room becomes ready: requests waiting on it may go. */
    private readonly onReady: () => void,
  ) {}

  /** The rooms joined through the client. */
  get names(): string[] {
    return [...this.rooms.keys()];
  }

  /** The last room-event id seen in `room`. */
  lastSeen(room: string): MsgId | undefined {
    return this.seen.get(room);
  }

  /**
   * Whether requests scoped to `room` may be written now: it is not joined
   * through the client, or its join was answered on this connection.
   */
  isReady(room: string | undefined): boolean {
    const rs = room === undefined ? undefined : this.rooms.get(room);
    return !rs || rs.ready;
  }

  /** A room event from the server: false for a duplicate (at or below the last seen id); else it becomes the last seen id. */
  accept(ev: RoomEvent): boolean {
    if (typeof ev.room === 'string' && typeof ev.msg === 'string') {
      const last = this.seen.get(ev.room);
      if (last !== undefined && compareIds(ev.msg, last) <= 0) return false;
      this.seen.set(ev.room, ev.msg);
    }
    return true;
  }

  /**
   * Joins `room` (kept across reconnects). Resolves at once only when the
   * room is joined on the current connection; otherwise at the answer of
   * its next (re-)join, sent now when `connected`.
   */
  join(room: string, since: MsgId | undefined, connected: boolean): Promise<JoinResult> {
    if (since !== undefined) this.seen.set(room, since);
    const known = this.rooms.get(room);
    if (known?.ready) return Promise.resolve(known.result!);
    return new Promise<JoinResult>((resolve, reject) => {
      let rs = known;
      if (!rs) {
        rs = { ready: false, joining: false, joinedBefore: false, result: undefined, waiters: [] };
        this.rooms.set(room, rs);
      }
      const state = rs;
      state.waiters.push((err) => (err ? reject(err) : resolve(state.result!)));
      if (connected && !state.joining) this.sendJoin(room, state);
    });
  }

  /**
   * Forgets `room`: its `join()` calls and waiting requests are rejected
   * with `cancelled`. True when the server should be told (the room was
   * joined, or joining, on this connection).
   */
  leave(room: string): boolean {
    const rs = this.rooms.get(room);
    if (!rs) return false;
    this.drop(room, rs, GatewayError.client('cancelled', `left ${room}`, 'leave', room));
    return rs.ready || rs.joining;
  }

  /** The server removed this connection from a room: it is no longer re-joined. */
  removed(ev: RemovedEvent): void {
    const rs = this.rooms.get(ev.room);
    if (rs) this.drop(ev.room, rs, new GatewayError('forbidden', `removed from ${ev.room} (${ev.reason})`, { room: ev.room }));
  }

  /** Authenticated: re-joins every room, each with `since` = its last seen id. */
  rejoin(): void {
    for (const [name, rs] of this.rooms) this.sendJoin(name, rs);
  }

  /** The connection dropped: no room is joined until its re-join is answered. */
  reset(): void {
    for (const rs of this.rooms.values()) rs.ready = rs.joining = false;
  }

  /** Stopped: forgets every room (the last seen ids stay) and rejects their `join()` calls with `err`. */
  clear(err: GatewayError): void {
    const rooms = [...this.rooms.values()];
    this.rooms.clear();
    for (const rs of rooms) for (const w of rs.waiters.splice(0)) w(err);
  }

  private drop(name: string, rs: RoomState, err: GatewayError): void {
    this.rooms.delete(name);
    for (const w of rs.waiters.splice(0)) w(err);
    this.reqs.reject((r) => r.room === name, err);
  }

  private sendJoin(name: string, rs: RoomState): void {
    const since = this.seen.get(name);
    rs.joining = true;
    const frame: ClientFrame = { op: 'join', room: name, ...(since !== undefined ? { since } : {}) };
    const r = this.reqs.create(frame, undefined, false, (err, reply) => {
      if (this.rooms.get(name) !== rs) return; // left meanwhile
      rs.joining = false;
      if (err) {
        if (err.code === 'disconnected') return; // re-joined at the next connection
        this.drop(name, rs, err);
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
      this.onReady();
    });
    this.reqs.send(r);
  }
}

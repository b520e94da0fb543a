import { compareIds } from './ids.js';
import type { HistoryMessage, MsgId, Reactions, RoomEvent } from './types.js';

/**
 * The messages of one room in id order, with edits, deletions and reactions
 * folded in: exactly the shape `history` returns (an edited message has its
 * latest `body` and `edited: <ts>`; a deleted one `deleted: true` and no
 * `body`; reactions as `{ key: { count, me } }`, `me` true when the current
 * user holds it; `reply_to` kept).
 *
 * Fed by live events and join replays (`apply`, e.g. from the client's
 * `roomEvent` event) and by history pages (`addHistory`). A message changed
 * by either is replaced by a new object (never mutated), so UI code can
 * compare by reference.
 *
 * Events whose target message is not loaded are ignored: page history to
 * get older messages in their current state. History is the server's truth:
 * a history entry replaces the view's copy of that message.
 */
export class RoomView {
  readonly room: string;
  /** The current user id: decides `me` in reactions (set it again after a guest reconnects). */
  me: string | undefined;
  private byId = new Map<MsgId, HistoryMessage>();
  private ids: MsgId[] = [];
  private cache: HistoryMessage[] | undefined;

  constructor(room: string, options: { me?: string | undefined } = {}) {
    this.room = room;
    this.me = options.me;
  }

  /** How many messages are loaded. */
  get size(): number {
    return this.ids.length;
  }

  /** The oldest loaded id (where to page `history` with `before`). */
  get oldest(): MsgId | undefined {
    return this.ids[0];
  }

  /** The newest loaded id. */
  get newest(): MsgId | undefined {
    return this.ids[this.ids.length - 1];
  }

  /** The messages, ascending by id. The array and objects are the view's: do not mutate them. */
  messages(): readonly HistoryMessage[] {
    return (this.cache ??= this.ids.map((id) => this.byId.get(id)!));
  }

  /** One message by id. */
  get(id: MsgId): HistoryMessage | undefined {
    return this.byId.get(id);
  }

  /**
   * Applies a room event (`msg`, `edit`, `delete`, `react`, `unreact`; any
   * other op, or another room's event, is ignored). Returns whether the
   * view changed.
   */
  apply(ev: RoomEvent | { op: string; room?: string }): boolean {
    if (ev.room !== this.room) return false;
    const e = ev as RoomEvent;
    if (e.op === 'msg') {
      if (this.byId.has(e.msg)) return false;
      this.put(copy(e));
      return true;
    }
    if (e.op !== 'edit' && e.op !== 'delete' && e.op !== 'react' && e.op !== 'unreact') return false;
    const m = this.byId.get(e.target);
    if (!m || m.deleted) return false;
    if (e.op === 'edit') {
      this.put({ ...m, body: e.body, edited: e.ts });
      return true;
    }
    if (e.op === 'delete') {
      const { body: _b, edited: _e, reactions: _r, ...rest } = m;
      this.put({ ...rest, deleted: true });
      return true;
    }
    const mine = this.me !== undefined && e.from === this.me;
    const reactions: Reactions = { ...m.reactions };
    const r = reactions[e.key];
    if (e.op === 'react') {
      if (mine && r?.me) return false; // a user holds a key once: seen already
      reactions[e.key] = { count: (r?.count ?? 0) + 1, me: mine || (r?.me ?? false) };
    } else {
      if (!r || (mine && !r.me)) return false;
      const count = r.count - 1;
      if (count <= 0) delete reactions[e.key];
      else reactions[e.key] = { count, me: mine ? false : r.me };
    }
    const { reactions: _old, ...rest } = m;
    this.put(Object.keys(reactions).length ? { ...rest, reactions } : rest);
    return true;
  }

  /**
   * Merges a history page (any order, any overlap): new messages are
   * inserted in id order, known ones replaced by the page's state.
   * Entries of another room are skipped.
   */
  addHistory(messages: readonly HistoryMessage[]): void {
    for (const m of messages) if (m.room === this.room) this.put(copy(m));
  }

  /** Forgets every message. */
  clear(): void {
    this.byId.clear();
    this.ids = [];
    this.cache = undefined;
  }

  private put(m: HistoryMessage): void {
    if (!this.byId.has(m.msg)) {
      // Binary search for the insertion point; appends are the common case.
      let lo = 0;
      let hi = this.ids.length;
      if (hi && compareIds(this.ids[hi - 1]!, m.msg) < 0) lo = hi;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (compareIds(this.ids[mid]!, m.msg) < 0) lo = mid + 1;
        else hi = mid;
      }
      this.ids.splice(lo, 0, m.msg);
    }
    this.byId.set(m.msg, m);
    this.cache = undefined;
  }
}

function copy(m: HistoryMessage): HistoryMessage {
  const c = { ...m };
  if (m.reactions) {
    const r: Reactions = {};
    for (const k of Object.keys(m.reactions)) r[k] = { ...m.reactions[k]! };
    c.reactions = r;
  }
  return c;
}

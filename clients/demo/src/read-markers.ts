/**
 * Read markers and receipts: my marker moves to the newest message on screen
 * (a moment after each redraw or scroll, while the page is visible), and
 * "Seen by …" goes under the message each other user's marker is at.
 */
import { compareIds } from '../../js/src/index.js';
import type { HistoryMessage, MsgId } from '../../js/src/index.js';
import type { ChatApp } from './app.js';
import type { Room } from './model.js';

export class ReadMarkers {
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly app: ChatApp) {}

  /** Moves the marker when the page becomes visible or focused; returns the undo. */
  listen(): () => void {
    const vis = () => this.schedule();
    document.addEventListener('visibilitychange', vis);
    window.addEventListener('focus', vis);
    return () => {
      document.removeEventListener('visibilitychange', vis);
      window.removeEventListener('focus', vis);
    };
  }

  schedule(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.markRead(), 250);
  }

  destroy(): void {
    clearTimeout(this.timer);
  }

  /** Moves the read marker to the newest message on screen, when the page is visible. */
  private markRead(): void {
    const app = this.app;
    const r = app.active;
    if (r.state !== 'joined' || app.client.state !== 'connected' || document.visibilityState !== 'visible') return;
    const box = app.messages.scroller.getBoundingClientRect();
    let id: string | undefined;
    const items = app.messages.list.children;
    for (let i = items.length - 1; i >= 0; i--) {
      const rect = items[i]!.getBoundingClientRect();
      if (rect.top < box.bottom - 8 && rect.bottom > box.top) {
        id = (items[i] as HTMLElement).dataset['msgId'];
        break;
      }
      if (rect.bottom <= box.top) break;
    }
    if (!id || (r.readSent && compareIds(id, r.readSent) <= 0)) return;
    r.readSent = id;
    app.client.read(r.name, id).catch(() => {
      if (r.readSent === id) r.readSent = undefined;
    });
  }

  /** Display names of other users whose read marker is at each message. */
  seenBy(r: Room, msgs: readonly HistoryMessage[]): Map<MsgId, string[]> {
    const app = this.app;
    const newest = new Map<string, MsgId>();
    for (const [user, id] of r.receipts) {
      if (user === app.client.user) continue;
      const name = app.nameOf(user);
      if (name === app.id.name) continue;
      const old = newest.get(name);
      if (!old || compareIds(id, old) > 0) newest.set(name, id);
    }
    const out = new Map<MsgId, string[]>();
    for (const [name, id] of newest) {
      let lo = 0;
      let hi = msgs.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (compareIds(msgs[mid]!.msg, id) <= 0) lo = mid + 1;
        else hi = mid;
      }
      const at = msgs[lo - 1];
      if (at) out.set(at.msg, [...(out.get(at.msg) ?? []), name].sort());
    }
    return out;
  }
}

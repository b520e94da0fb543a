/**
 * The messages of the current room: at the top "Load older messages" (also
 * on scrolling to the top) or the beginning of the room; one row per message,
 * kept as long as its message and signature are unchanged; the pending sends
 * under them; and the scroll position: stuck to the end while it is there,
 * else steady when older messages are added above ("Jump to latest").
 */
import type { HistoryMessage, MsgId } from '../../js/src/index.js';
import type { ChatApp } from './app.js';
import { h } from './dom.js';
import { dayKey, dayLabel } from './format.js';
import { messageRow, pendingRow } from './message-row.js';
import type { Room } from './model.js';

const GROUP_MS = 5 * 60_000;

interface Row {
  el: HTMLElement;
  m: HistoryMessage;
  /** What else the row shows (grouping, names, quote, seen by, edit state): redrawn when it changes. */
  sig: string;
}

export class MessageList {
  readonly scroller = h('div', { class: 'scroller', testid: 'scroller' });
  private readonly top = h('div', { class: 'top' });
  /** One `li` per message, with `data-msg-id`. */
  readonly list = h('ol', { class: 'messages', testid: 'message-list' });
  private readonly pendingList = h('ol', { class: 'messages pending', testid: 'pending-list' });
  readonly jump = h('button', { class: 'jump', testid: 'jump', hidden: true }, 'Jump to latest ↓');
  private readonly rows = new Map<MsgId, Row>();
  private rowsRoom = '';
  /** The list is scrolled to its end: keep it there as messages arrive. */
  stickToBottom = true;

  constructor(private readonly app: ChatApp) {}

  /** Listens to scrolling and "Jump to latest"; returns the scroller (top, messages, pending). */
  build(): HTMLElement {
    this.scroller.addEventListener('scroll', () => this.onScroll(), { passive: true });
    this.jump.addEventListener('click', () => {
      this.stickToBottom = true;
      this.app.render();
    });
    this.scroller.append(this.top, this.list, this.pendingList);
    return this.scroller;
  }

  /** Scrolls the row of message `id` to the middle, if it is loaded. */
  reveal(id: MsgId): void {
    this.rows.get(id)?.el.scrollIntoView({ block: 'center', behavior: 'smooth' });
  }

  private onScroll(): void {
    const s = this.scroller;
    this.stickToBottom = s.scrollHeight - s.scrollTop - s.clientHeight < 48;
    this.jump.hidden = this.stickToBottom;
    if (s.scrollTop < 64) void this.app.loadOlder();
    this.app.reading.schedule();
  }

  draw(): void {
    const app = this.app;
    const r = app.active;
    const s = this.scroller;
    if (this.rowsRoom !== r.name) {
      this.rows.clear();
      this.list.replaceChildren();
      this.rowsRoom = r.name;
      this.stickToBottom = true;
    }
    // Keeps the first message where it is on screen when older ones are added above it.
    const anchor = (this.list.firstElementChild as HTMLElement | null)?.dataset['msgId'];
    const anchorTop = anchor ? this.rows.get(anchor)!.el.getBoundingClientRect().top : 0;

    this.top.replaceChildren(this.head(r));
    this.drawRows(r);

    app.outbox.prune();
    this.pendingList.replaceChildren(...app.outbox.inRoom(r.name).map((p) => pendingRow(app, p)));

    this.jump.hidden = this.stickToBottom;
    if (this.stickToBottom) s.scrollTop = s.scrollHeight;
    else if (anchor && this.rows.has(anchor)) {
      s.scrollTop += this.rows.get(anchor)!.el.getBoundingClientRect().top - anchorTop;
    }
  }

  /** "Loading messages…", the beginning of the room, or "Load older messages". */
  private head(r: Room): HTMLElement {
    return !r.loaded
      ? h('p', { class: 'hint' }, 'Loading messages…')
      : r.complete
        ? h(
            'div',
            { class: 'start', testid: 'history-start' },
            h('strong', null, `#${r.name}`),
            h('span', null, 'This is the beginning of the room.'),
          )
        : h(
            'button',
            {
              class: 'ghost',
              testid: 'load-older',
              disabled: r.loadingOlder,
              onclick: () => void this.app.loadOlder(),
            },
            r.loadingOlder ? 'Loading…' : 'Load older messages',
          );
  }

  /** Brings the list in step with the room's view, reusing the rows that did not change. */
  private drawRows(r: Room): void {
    const app = this.app;
    const msgs = r.view.messages();
    const seen = app.reading.seenBy(r, msgs);
    const me = app.client.user;
    const keep = new Set<MsgId>();
    let cursor = this.list.firstChild;
    let prev: HistoryMessage | undefined;
    for (const m of msgs) {
      keep.add(m.msg);
      const newDay = !prev || dayKey(prev.ts) !== dayKey(m.ts);
      const cont =
        !newDay && !!prev && prev.from === m.from && !prev.deleted && !m.reply_to && m.ts - prev.ts < GROUP_MS;
      const quoted = m.reply_to ? r.view.get(m.reply_to) : undefined;
      const sig = [
        newDay ? dayLabel(m.ts) : '',
        cont,
        m.from === me,
        app.nameOf(m.from),
        quoted ? `${quoted.msg}:${quoted.edited ?? ''}:${quoted.deleted ?? ''}:${app.nameOf(quoted.from)}` : '',
        (seen.get(m.msg) ?? []).join(','),
        app.actions.editing === m.msg,
        app.actions.confirmDelete === m.msg,
      ].join('|');
      let row = this.rows.get(m.msg);
      if (!row || row.m !== m || row.sig !== sig) {
        const el = messageRow(app, m, { newDay, cont, quoted, seen: seen.get(m.msg), mine: m.from === me });
        if (row) {
          if (cursor === row.el) cursor = el;
          row.el.replaceWith(el);
        }
        row = { el, m, sig };
        this.rows.set(m.msg, row);
      }
      if (cursor === row.el) cursor = cursor.nextSibling;
      else this.list.insertBefore(row.el, cursor);
      prev = m;
    }
    for (const [id, row] of this.rows) {
      if (!keep.has(id)) {
        row.el.remove();
        this.rows.delete(id);
      }
    }
  }
}

/**
 * The chat screen: one ChatClient, one RoomView per room, and the DOM kept in
 * step with them. User text only ever reaches the DOM as text nodes.
 */
import { ChatClient, RoomView, compareIds, makeNonce } from '../../js/src/index.js';
import type { HistoryMessage, Json, MsgId, RoomEvent } from '../../js/src/index.js';
import { h, type Child } from './dom.js';
import { bodyName, bodyText, clock, dayKey, dayLabel, hue, initials, people } from './format.js';
import { ROOM_RE, type Settings } from './settings.js';
import { save } from './store.js';

const EMOJI = ['👍', '❤️', '😂', '🎉', '😮'];
const PAGE = 50;
const GROUP_MS = 5 * 60_000;
const TYPING_SEND_MS = 3_000;
const TYPING_SHOW_MS = 5_000;

export interface Identity {
  token?: string;
  name: string;
}

interface Pending {
  key: number;
  room: string;
  body: Json;
  nonce: string;
  replyTo?: MsgId;
  msg?: MsgId;
  failed?: string;
}

class Room {
  readonly view: RoomView;
  presence = new Set<string>();
  typers = new Map<string, number>();
  receipts = new Map<string, MsgId>();
  unread = 0;
  loaded = false;
  complete = false;
  loadingOlder = false;
  state: 'joining' | 'joined' | 'failed' = 'joining';
  error = '';
  readSent: MsgId | undefined;
  constructor(readonly name: string) {
    this.view = new RoomView(name);
  }
}

interface Row {
  el: HTMLElement;
  m: HistoryMessage;
  sig: string;
}

const nothing = () => {};

export class ChatApp {
  private readonly client: ChatClient;
  private readonly rooms = new Map<string, Room>();
  private active!: Room;
  private readonly names = new Map<string, string>();
  private readonly pending: Pending[] = [];
  private readonly rows = new Map<MsgId, Row>();
  private rowsRoom = '';
  private seq = 0;
  private editing: MsgId | undefined;
  private editDraft = '';
  private confirmDelete: MsgId | undefined;
  private replyTo: MsgId | undefined;
  private typingSent = 0;
  private reconnectAt = 0;
  private closedWhy = '';
  private dirty = false;
  /** The list is scrolled to its end: keep it there as messages arrive. */
  private stickToBottom = true;
  private ticker: ReturnType<typeof setInterval> | undefined;
  private typingTimer: ReturnType<typeof setTimeout> | undefined;
  private readTimer: ReturnType<typeof setTimeout> | undefined;
  private toastTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly off: Array<() => void> = [];

  // Static parts of the screen.
  private readonly el = {
    status: h('div', { class: 'status', testid: 'status', role: 'status' }),
    roomList: h('ul', { class: 'room-list', testid: 'room-list' }),
    roomInput: h('input', {
      testid: 'room-input',
      placeholder: 'Add a room…',
      maxlength: 128,
      'aria-label': 'Room name',
      autocomplete: 'off',
    }),
    peopleHead: h('h2', null),
    people: h('ul', { class: 'people', testid: 'presence' }),
    me: h('div', { class: 'me', testid: 'me' }),
    title: h('h1', { testid: 'room-title' }),
    subtitle: h('span', { class: 'subtitle' }),
    headDot: h('span', { class: 'dot head-dot', testid: 'head-status' }),
    banner: h('div', { class: 'banner', testid: 'banner', hidden: true }),
    scroller: h('div', { class: 'scroller', testid: 'scroller' }),
    top: h('div', { class: 'top' }),
    list: h('ol', { class: 'messages', testid: 'message-list' }),
    pendingList: h('ol', { class: 'messages pending', testid: 'pending-list' }),
    typing: h('div', { class: 'typing', testid: 'typing', 'aria-live': 'polite' }),
    replying: h('div', { class: 'replying', testid: 'replying', hidden: true }),
    notice: h('div', { class: 'notice', testid: 'room-notice', hidden: true }),
    input: h('textarea', { testid: 'composer-input', rows: 1, maxlength: 4000, 'aria-label': 'Message' }),
    toast: h('div', { class: 'toast', testid: 'toast', role: 'alert', hidden: true }),
    jump: h('button', { class: 'jump', testid: 'jump', hidden: true }, 'Jump to latest ↓'),
    shell: h('div', { class: 'shell' }),
  };

  constructor(
    root: HTMLElement,
    settings: Settings,
    private readonly id: Identity,
    roomNames: string[],
    private readonly onExit: (error?: string) => void,
  ) {
    this.client = new ChatClient({
      urls: settings.gateways,
      ...(id.token ? { token: id.token } : { guest: true }),
      backoff: { initialMs: 500, maxMs: 10_000 },
    });
    this.buildShell(root);
    this.wire();
    for (const n of roomNames) this.addRoom(n, false);
    this.select(this.rooms.get(roomNames[0]!)!);
    this.client.connect().catch(nothing);
    this.ticker = setInterval(() => this.tick(), 1000);
    this.render();
  }

  // ------------------------------------------------------------ layout

  private buildShell(root: HTMLElement): void {
    const e = this.el;
    const addRoom = h(
      'form',
      {
        class: 'add-room',
        testid: 'add-room',
        onsubmit: (ev) => {
          ev.preventDefault();
          const name = e.roomInput.value.trim();
          if (!ROOM_RE.test(name)) return this.toast('Room names are 1–128 of A–Z a–z 0–9 _ . : -');
          e.roomInput.value = '';
          this.select(this.addRoom(name, true));
          e.shell.classList.remove('nav-open');
        },
      },
      e.roomInput,
      h('button', { type: 'submit', class: 'icon', title: 'Add room', 'aria-label': 'Add room' }, '+'),
    );
    const sidebar = h(
      'aside',
      { class: 'sidebar', testid: 'sidebar' },
      h('div', { class: 'brand' }, h('div', { class: 'logo', 'aria-hidden': 'true' }), h('span', null, 'Chat')),
      e.status,
      h('section', null, h('h2', null, 'Rooms'), e.roomList, addRoom),
      h('section', { class: 'grow' }, e.peopleHead, e.people),
      e.me,
    );
    const composer = h(
      'form',
      { class: 'composer', testid: 'composer', onsubmit: (ev) => (ev.preventDefault(), this.submit()) },
      e.input,
      h('button', { type: 'submit', class: 'primary', testid: 'send', title: 'Send (Enter)' }, 'Send'),
    );
    e.input.addEventListener('keydown', (ev) => this.composerKey(ev));
    e.input.addEventListener('input', () => this.composerInput());
    e.scroller.addEventListener('scroll', () => this.onScroll(), { passive: true });
    e.jump.addEventListener('click', () => {
      this.stickToBottom = true;
      this.render();
    });
    e.scroller.append(e.top, e.list, e.pendingList);
    const main = h(
      'main',
      { class: 'chat' },
      h(
        'header',
        { class: 'chat-head' },
        h(
          'button',
          {
            class: 'icon menu',
            testid: 'menu',
            'aria-label': 'Rooms and people',
            onclick: () => e.shell.classList.toggle('nav-open'),
          },
          '☰',
        ),
        h('div', { class: 'titles' }, e.title, e.subtitle),
        e.headDot,
      ),
      e.banner,
      e.scroller,
      e.jump,
      e.typing,
      e.replying,
      e.notice,
      composer,
    );
    const scrim = h('div', { class: 'scrim', onclick: () => e.shell.classList.remove('nav-open') });
    e.shell.append(sidebar, main, scrim, e.toast);
    root.replaceChildren(e.shell);
    const vis = () => this.scheduleRead();
    document.addEventListener('visibilitychange', vis);
    window.addEventListener('focus', vis);
    this.off.push(() => {
      document.removeEventListener('visibilitychange', vis);
      window.removeEventListener('focus', vis);
    });
  }

  // ------------------------------------------------------------ client events

  private wire(): void {
    const c = this.client;
    const on = this.off.push.bind(this.off);
    on(c.on('roomEvent', (ev) => this.onRoomEvent(ev)));
    on(
      c.on('joined', (ev) => {
        this.rooms.get(ev.room)?.presence.add(ev.user);
        this.render();
      }),
    );
    on(
      c.on('left', (ev) => {
        this.rooms.get(ev.room)?.presence.delete(ev.user);
        this.render();
      }),
    );
    on(
      c.on('typing', (ev) => {
        const r = this.rooms.get(ev.room);
        if (!r || ev.user === c.user) return;
        r.typers.set(ev.user, Date.now() + TYPING_SHOW_MS);
        this.render();
      }),
    );
    on(
      c.on('read', (ev) => {
        const r = this.rooms.get(ev.room);
        if (!r) return;
        const old = r.receipts.get(ev.user);
        if (!old || compareIds(ev.msg, old) > 0) r.receipts.set(ev.user, ev.msg);
        this.render();
      }),
    );
    on(
      c.on('gap', ({ room }) => {
        const r = this.rooms.get(room);
        if (r) void this.loadLatest(r);
      }),
    );
    on(
      c.on('connected', ({ user }) => {
        // A re-join resumes from the last room event seen; history pages do not
        // count, so a room with none seen gets `gap` and is paged again there.
        for (const r of this.rooms.values()) {
          r.view.me = user;
          if (r.state !== 'failed') this.afterJoin(r);
        }
        this.render();
      }),
    );
    on(c.on('state', () => this.render()));
    on(
      c.on('disconnected', ({ delayMs }) => {
        this.reconnectAt = Date.now() + (delayMs ?? 0);
        for (const r of this.rooms.values()) if (r.state === 'joined') r.state = 'joining';
        this.render();
      }),
    );
    on(
      c.on('closed', ({ cause, code, reason }) => {
        if (cause === 'unauthorized' && !this.id.token) {
          // A guest refused at `auth`: the client stopped at once (no retries).
          this.destroy();
          return this.onExit('This gateway does not accept guests: sign in with a token.');
        }
        this.closedWhy =
          cause === 'revoked'
            ? 'disconnected by the server (token revoked or operator action)'
            : cause === 'unauthorized'
              ? 'the token was refused or has expired'
              : cause === 'protocol'
                ? `protocol error (${code}${reason ? `: ${reason}` : ''})`
                : 'signed out';
        this.render();
      }),
    );
    on(
      c.on('joinFailed', ({ room, error }) => {
        const r = this.rooms.get(room);
        if (!r) return;
        r.state = 'failed';
        r.error = `Could not join: ${error.message}`;
        this.render();
      }),
    );
    on(
      c.on('removed', ({ room, reason }) => {
        const r = this.rooms.get(room);
        if (!r) return;
        r.state = 'failed';
        r.error = `You were removed from this room (${reason}).`;
        this.render();
      }),
    );
    on(c.on('error', (e) => this.toast(e.message)));
  }

  private onRoomEvent(ev: RoomEvent): void {
    const r = this.rooms.get(ev.room);
    if (!r) return;
    if (ev.op === 'msg' || ev.op === 'edit') this.learn(ev.from, ev.body);
    if (ev.op === 'msg') r.typers.delete(ev.from);
    if (!r.view.apply(ev)) return;
    if (ev.op === 'msg' && r !== this.active && ev.from !== this.client.user) r.unread++;
    this.render();
  }

  /** After each (re-)join of `r` on a connection: presence, receipts, first history page. */
  private afterJoin(r: Room): void {
    this.client.join(r.name).then(
      async (res) => {
        if (this.rooms.get(r.name) !== r) return;
        r.state = 'joined';
        r.error = '';
        if (res.read && (!r.readSent || compareIds(res.read, r.readSent) > 0)) r.readSent = res.read;
        this.render();
        const tasks: Array<Promise<unknown>> = [
          this.client.presence(r.name).then((u) => (r.presence = new Set(u))),
          this.client.receipts(r.name).then((m) => (r.receipts = new Map(Object.entries(m)))),
        ];
        if (!r.loaded) tasks.push(this.loadLatest(r));
        await Promise.allSettled(tasks);
        this.render();
      },
      (e: Error) => {
        if (this.rooms.get(r.name) !== r || r.state === 'failed') return;
        r.state = 'failed';
        r.error = `Could not join: ${e.message}`;
        this.render();
      },
    );
  }

  private async loadLatest(r: Room): Promise<void> {
    try {
      const page = await this.client.history(r.name, { limit: PAGE });
      this.addPage(r, page);
      if (!r.loaded && page.length < PAGE) r.complete = true;
      r.loaded = true;
    } catch {
      /* disconnected: retried after the re-join */
    }
    this.render();
  }

  private async loadOlder(): Promise<void> {
    const r = this.active;
    const before = r.view.oldest;
    if (r.complete || r.loadingOlder || !r.loaded || !before) return;
    r.loadingOlder = true;
    this.render();
    try {
      const page = await this.client.history(r.name, { before, limit: PAGE });
      this.addPage(r, page);
      if (page.length < PAGE) r.complete = true;
    } catch (e) {
      this.toast(`Could not load older messages: ${(e as Error).message}`);
    }
    r.loadingOlder = false;
    this.render();
  }

  private addPage(r: Room, page: readonly HistoryMessage[]): void {
    for (const m of page) this.learn(m.from, m.body);
    r.view.addHistory(page);
  }

  // ------------------------------------------------------------ rooms

  private addRoom(name: string, persist: boolean): Room {
    let r = this.rooms.get(name);
    if (r) return r;
    r = new Room(name);
    r.view.me = this.client.user;
    this.rooms.set(name, r);
    this.client.join(name).catch(nothing);
    if (this.client.state === 'connected') this.afterJoin(r);
    if (persist) this.persistRooms();
    return r;
  }

  private leaveRoom(r: Room): void {
    if (this.rooms.size < 2) return;
    this.rooms.delete(r.name);
    void this.client.leave(r.name);
    for (let i = this.pending.length - 1; i >= 0; i--) if (this.pending[i]!.room === r.name) this.pending.splice(i, 1);
    if (r === this.active) this.select(this.rooms.values().next().value!);
    this.persistRooms();
    this.render();
  }

  private retryRoom(r: Room): void {
    r.state = 'joining';
    r.error = '';
    this.client.join(r.name).catch(nothing);
    if (this.client.state === 'connected') this.afterJoin(r);
    this.render();
  }

  private persistRooms(): void {
    save('rooms', JSON.stringify([...this.rooms.keys()]));
  }

  private select(r: Room): void {
    if (this.active === r) return;
    this.active = r;
    r.unread = 0;
    this.editing = this.confirmDelete = this.replyTo = undefined;
    this.el.input.placeholder = `Message #${r.name}`;
    this.render();
  }

  // ------------------------------------------------------------ actions

  private submit(): void {
    const text = this.el.input.value.trim();
    if (!text) return;
    const r = this.active;
    if (r.state === 'failed') return this.toast(r.error);
    const p: Pending = {
      key: ++this.seq,
      room: r.name,
      body: { text, name: this.id.name },
      nonce: makeNonce(),
      ...(this.replyTo ? { replyTo: this.replyTo } : {}),
    };
    this.el.input.value = '';
    this.composerInput();
    this.replyTo = undefined;
    this.typingSent = 0;
    this.pending.push(p);
    this.dispatch(p);
    this.stickToBottom = true;
    this.render();
  }

  private dispatch(p: Pending): void {
    delete p.failed;
    this.client
      .send(p.room, p.body, { nonce: p.nonce, ...(p.replyTo ? { replyTo: p.replyTo } : {}) })
      .then(
        (res) => {
          p.msg = res.msg;
          // Shown as sent once the message event is in the view; at the latest after 2 s.
          setTimeout(() => this.dropPending(p), 2000);
        },
        (e: Error) => {
          p.failed = e.message;
        },
      )
      .finally(() => this.render());
  }

  private dropPending(p: Pending): void {
    const i = this.pending.indexOf(p);
    if (i >= 0) this.pending.splice(i, 1);
    this.render();
  }

  private composerKey(ev: KeyboardEvent): void {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      this.submit();
    } else if (ev.key === 'Escape' && this.replyTo) {
      this.replyTo = undefined;
      this.render();
    } else if (ev.key === 'ArrowUp' && !this.el.input.value) {
      const me = this.client.user;
      const mine = [...this.active.view.messages()].reverse().find((m) => m.from === me && !m.deleted);
      if (mine) {
        ev.preventDefault();
        this.startEdit(mine);
      }
    }
  }

  private composerInput(): void {
    const t = this.el.input;
    t.style.height = 'auto';
    t.style.height = `${Math.min(t.scrollHeight, 160)}px`;
    const now = Date.now();
    if (t.value.trim() && now - this.typingSent > TYPING_SEND_MS && this.active.state === 'joined') {
      if (this.client.typing(this.active.name)) this.typingSent = now;
    }
  }

  private startEdit(m: HistoryMessage): void {
    this.editing = m.msg;
    this.editDraft = bodyText(m.body).text;
    this.confirmDelete = undefined;
    this.render();
    const input = this.el.list.querySelector<HTMLTextAreaElement>('[data-testid="edit-input"]');
    input?.focus();
    input?.setSelectionRange(input.value.length, input.value.length);
  }

  private saveEdit(m: HistoryMessage): void {
    const text = this.editDraft.trim();
    this.editing = undefined;
    this.render();
    this.el.input.focus();
    if (!text || text === bodyText(m.body).text) return;
    const old = m.body && typeof m.body === 'object' && !Array.isArray(m.body) ? m.body : {};
    const body: Json = { ...old, text, name: bodyName(m.body) ?? this.id.name };
    this.client.edit(this.active.name, m.msg, body).catch((e: Error) => this.toast(`Edit failed: ${e.message}`));
  }

  private remove(m: HistoryMessage): void {
    if (this.confirmDelete !== m.msg) {
      this.confirmDelete = m.msg;
      this.render();
      setTimeout(() => {
        if (this.confirmDelete === m.msg) {
          this.confirmDelete = undefined;
          this.render();
        }
      }, 4000);
      return;
    }
    this.confirmDelete = undefined;
    this.client.delete(this.active.name, m.msg).catch((e: Error) => this.toast(`Delete failed: ${e.message}`));
  }

  private toggleReaction(m: HistoryMessage, key: string): void {
    const mine = m.reactions?.[key]?.me === true;
    const room = this.active.name;
    (mine ? this.client.unreact(room, m.msg, key) : this.client.react(room, m.msg, key)).catch((e: Error) =>
      this.toast(`Reaction failed: ${e.message}`),
    );
  }

  private toast(text: string): void {
    const t = this.el.toast;
    t.textContent = text;
    t.hidden = false;
    clearTimeout(this.toastTimer);
    this.toastTimer = setTimeout(() => (t.hidden = true), 5000);
  }

  private signOut(): void {
    this.client.close();
    this.destroy();
    this.onExit();
  }

  private destroy(): void {
    clearInterval(this.ticker);
    clearTimeout(this.typingTimer);
    clearTimeout(this.readTimer);
    clearTimeout(this.toastTimer);
    for (const f of this.off.splice(0)) f();
  }

  // ------------------------------------------------------------ names

  private learn(user: string, body: Json | undefined): void {
    const n = bodyName(body);
    if (n) this.names.set(user, n);
  }

  private nameOf(user: string): string {
    if (user === this.client.user) return this.id.name;
    return this.names.get(user) ?? user;
  }

  private avatar(name: string, small = false): HTMLElement {
    const a = h('span', { class: small ? 'avatar sm' : 'avatar', 'aria-hidden': 'true' }, initials(name));
    a.style.setProperty('--h', String(hue(name)));
    return a;
  }

  // ------------------------------------------------------------ reading

  private onScroll(): void {
    const s = this.el.scroller;
    this.stickToBottom = s.scrollHeight - s.scrollTop - s.clientHeight < 48;
    this.el.jump.hidden = this.stickToBottom;
    if (s.scrollTop < 64) void this.loadOlder();
    this.scheduleRead();
  }

  private scheduleRead(): void {
    clearTimeout(this.readTimer);
    this.readTimer = setTimeout(() => this.markRead(), 250);
  }

  /** Moves the read marker to the newest message on screen, when the page is visible. */
  private markRead(): void {
    const r = this.active;
    if (r.state !== 'joined' || this.client.state !== 'connected' || document.visibilityState !== 'visible') return;
    const box = this.el.scroller.getBoundingClientRect();
    let id: string | undefined;
    const items = this.el.list.children;
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
    this.client.read(r.name, id).catch(() => {
      if (r.readSent === id) r.readSent = undefined;
    });
  }

  /** Display names of other users whose read marker is at each message. */
  private seenBy(r: Room, msgs: readonly HistoryMessage[]): Map<MsgId, string[]> {
    const newest = new Map<string, MsgId>();
    for (const [user, id] of r.receipts) {
      if (user === this.client.user) continue;
      const name = this.nameOf(user);
      if (name === this.id.name) continue;
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

  // ------------------------------------------------------------ rendering

  /** Renders once after the current burst of events. */
  private render(): void {
    if (this.dirty) return;
    this.dirty = true;
    queueMicrotask(() => {
      this.dirty = false;
      this.draw();
    });
  }

  private tick(): void {
    const st = this.client.state;
    if (st === 'disconnected' || [...this.rooms.values()].some((r) => r.typers.size)) this.render();
  }

  private draw(): void {
    this.drawStatus();
    this.drawRooms();
    this.drawPeople();
    this.drawMessages();
    this.drawTyping();
    this.drawComposer();
    this.scheduleRead();
  }

  private drawStatus(): void {
    const c = this.client;
    const e = this.el;
    let cls = 'wait';
    let text = 'Connecting…';
    let detail = c.url ? c.url.replace(/^wss?:\/\//, '').replace(/\/ws$/, '') : '';
    if (c.state === 'connected') {
      cls = 'ok';
      text = `Connected to ${c.node}`;
    } else if (c.state === 'disconnected') {
      const s = Math.ceil((this.reconnectAt - Date.now()) / 1000);
      text = s > 0 ? `Reconnecting in ${s} s` : 'Reconnecting…';
      cls = 'warn';
    } else if (c.state === 'closed') {
      cls = 'bad';
      text = 'Closed';
      detail = this.closedWhy;
    }
    e.status.dataset['state'] = c.state;
    e.status.dataset['node'] = c.state === 'connected' ? (c.node ?? '') : '';
    e.status.className = `status ${cls}`;
    e.headDot.parentElement!.className = `chat-head ${cls}`;
    e.headDot.title = text;
    e.status.replaceChildren(
      h('span', { class: 'dot', 'aria-hidden': 'true' }),
      h('span', { class: 'status-text', testid: 'status-text' }, text),
      detail && h('small', null, detail),
    );

    const waiting = c.pendingSends;
    const b = e.banner;
    b.hidden = c.state === 'connected';
    if (b.hidden) return b.replaceChildren();
    const more = waiting ? ` ${waiting} message${waiting > 1 ? 's' : ''} will be sent when back online.` : '';
    b.className = `banner ${cls}`;
    b.replaceChildren(h('span', null, c.state === 'closed' ? `Connection closed: ${this.closedWhy}.` : `${text}.${more}`));
    if (c.state === 'closed') {
      b.append(h('button', { testid: 'sign-in-again', onclick: () => this.signOut() }, 'Sign in again'));
    } else if (c.state === 'disconnected') {
      b.append(h('button', { testid: 'retry', onclick: () => void c.connect().catch(nothing) }, 'Retry now'));
    }
  }

  private drawRooms(): void {
    const items = [...this.rooms.values()].map((r) =>
      h(
        'li',
        null,
        h(
          'button',
          {
            class: `room${r === this.active ? ' active' : ''}${r.state === 'failed' ? ' failed' : ''}`,
            testid: 'room',
            'data-room': r.name,
            'aria-current': r === this.active ? 'true' : null,
            onclick: () => {
              this.select(r);
              this.el.shell.classList.remove('nav-open');
            },
          },
          h('span', { class: 'hash' }, '#'),
          h('span', { class: 'room-name' }, r.name),
          r.unread > 0 && h('span', { class: 'badge', testid: 'unread' }, r.unread > 99 ? '99+' : r.unread),
        ),
        this.rooms.size > 1 &&
          h(
            'button',
            {
              class: 'icon leave',
              title: `Leave #${r.name}`,
              'aria-label': `Leave ${r.name}`,
              testid: 'leave-room',
              onclick: () => this.leaveRoom(r),
            },
            '×',
          ),
      ),
    );
    this.el.roomList.replaceChildren(...items);

    const me = this.client.user ?? '';
    this.el.me.replaceChildren(
      this.avatar(this.id.name),
      h(
        'div',
        { class: 'who' },
        h('strong', null, this.id.name),
        h('small', { testid: 'me-id' }, me || (this.id.token ? 'signed in' : 'guest')),
      ),
      h('button', { class: 'ghost', testid: 'sign-out', onclick: () => this.signOut() }, 'Sign out'),
    );
  }

  private drawPeople(): void {
    const r = this.active;
    const me = this.client.user;
    const users = [...r.presence].sort((a, b) =>
      a === me ? -1 : b === me ? 1 : this.nameOf(a).localeCompare(this.nameOf(b)),
    );
    this.el.peopleHead.textContent = `In #${r.name} — ${users.length}`;
    this.el.people.replaceChildren(
      ...users.map((u) =>
        h(
          'li',
          { testid: 'presence-user', 'data-user': u, title: u },
          h('span', { class: 'pres' }, this.avatar(this.nameOf(u), true), h('i', { class: 'online' })),
          h('span', { class: 'pname' }, this.nameOf(u)),
          u === me && h('small', null, 'you'),
        ),
      ),
    );
    this.el.title.textContent = `#${r.name}`;
    this.el.subtitle.textContent =
      this.client.state !== 'connected'
        ? 'offline'
        : r.state === 'joined'
          ? `${users.length} online`
          : r.state === 'joining'
            ? 'joining…'
            : 'not joined';
  }

  private drawTyping(): void {
    const r = this.active;
    const now = Date.now();
    const names: string[] = [];
    let next = Infinity;
    for (const [u, until] of r.typers) {
      if (until <= now) r.typers.delete(u);
      else {
        names.push(this.nameOf(u));
        next = Math.min(next, until);
      }
    }
    this.el.typing.textContent = names.length
      ? `${people(names.sort())} ${names.length > 1 ? 'are' : 'is'} typing…`
      : '';
    clearTimeout(this.typingTimer);
    if (next < Infinity) this.typingTimer = setTimeout(() => this.render(), next - now + 20);
  }

  private drawComposer(): void {
    const r = this.active;
    const target = this.replyTo ? r.view.get(this.replyTo) : undefined;
    const rep = this.el.replying;
    rep.hidden = !target;
    if (target) {
      rep.replaceChildren(
        h('span', null, 'Replying to ', h('strong', null, this.nameOf(target.from)), ' ', snippet(target)),
        h(
          'button',
          {
            class: 'icon',
            'aria-label': 'Cancel reply',
            onclick: () => {
              this.replyTo = undefined;
              this.render();
            },
          },
          '×',
        ),
      );
    }
    const n = this.el.notice;
    n.hidden = r.state !== 'failed';
    if (r.state === 'failed') {
      n.replaceChildren(
        h('span', null, r.error),
        h('button', { testid: 'rejoin', onclick: () => this.retryRoom(r) }, 'Join again'),
      );
    }
  }

  private drawMessages(): void {
    const r = this.active;
    const e = this.el;
    const s = e.scroller;
    if (this.rowsRoom !== r.name) {
      this.rows.clear();
      e.list.replaceChildren();
      this.rowsRoom = r.name;
      this.stickToBottom = true;
    }
    // Keeps the first message where it is on screen when older ones are added above it.
    const anchor = (e.list.firstElementChild as HTMLElement | null)?.dataset['msgId'];
    const anchorTop = anchor ? this.rows.get(anchor)!.el.getBoundingClientRect().top : 0;

    e.top.replaceChildren(
      !r.loaded
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
                onclick: () => void this.loadOlder(),
              },
              r.loadingOlder ? 'Loading…' : 'Load older messages',
            ),
    );

    const msgs = r.view.messages();
    const seen = this.seenBy(r, msgs);
    const me = this.client.user;
    const keep = new Set<MsgId>();
    let cursor = e.list.firstChild;
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
        this.nameOf(m.from),
        quoted ? `${quoted.msg}:${quoted.edited ?? ''}:${quoted.deleted ?? ''}:${this.nameOf(quoted.from)}` : '',
        (seen.get(m.msg) ?? []).join(','),
        this.editing === m.msg,
        this.confirmDelete === m.msg,
      ].join('|');
      let row = this.rows.get(m.msg);
      if (!row || row.m !== m || row.sig !== sig) {
        const el = this.messageRow(m, { newDay, cont, quoted, seen: seen.get(m.msg), mine: m.from === me });
        if (row) {
          if (cursor === row.el) cursor = el;
          row.el.replaceWith(el);
        }
        row = { el, m, sig };
        this.rows.set(m.msg, row);
      }
      if (cursor === row.el) cursor = cursor.nextSibling;
      else e.list.insertBefore(row.el, cursor);
      prev = m;
    }
    for (const [id, row] of this.rows) {
      if (!keep.has(id)) {
        row.el.remove();
        this.rows.delete(id);
      }
    }

    for (let i = this.pending.length - 1; i >= 0; i--) {
      const p = this.pending[i]!;
      if (p.msg && this.rooms.get(p.room)?.view.get(p.msg)) this.pending.splice(i, 1);
    }
    e.pendingList.replaceChildren(
      ...this.pending.filter((p) => p.room === r.name).map((p) => this.pendingRow(p)),
    );

    e.jump.hidden = this.stickToBottom;
    if (this.stickToBottom) s.scrollTop = s.scrollHeight;
    else if (anchor && this.rows.has(anchor)) {
      s.scrollTop += this.rows.get(anchor)!.el.getBoundingClientRect().top - anchorTop;
    }
  }

  private messageRow(
    m: HistoryMessage,
    o: { newDay: boolean; cont: boolean; quoted: HistoryMessage | undefined; seen: string[] | undefined; mine: boolean },
  ): HTMLElement {
    const name = this.nameOf(m.from);
    const full = new Date(m.ts).toLocaleString();
    const editing = this.editing === m.msg;
    let content: Child;
    if (m.deleted) {
      content = h('p', { class: 'text deleted', testid: 'message-deleted' }, 'This message was deleted.');
    } else if (editing) {
      const ta = h('textarea', { testid: 'edit-input', rows: 2, maxlength: 4000, 'aria-label': 'Edit message' });
      ta.value = this.editDraft;
      ta.addEventListener('input', () => (this.editDraft = ta.value));
      ta.addEventListener('keydown', (ev) => {
        if (ev.key === 'Enter' && !ev.shiftKey) {
          ev.preventDefault();
          this.saveEdit(m);
        } else if (ev.key === 'Escape') {
          this.editing = undefined;
          this.render();
        }
      });
      content = h(
        'form',
        { class: 'edit', onsubmit: (ev) => (ev.preventDefault(), this.saveEdit(m)) },
        ta,
        h(
          'div',
          { class: 'edit-actions' },
          h('small', null, 'Enter to save · Esc to cancel'),
          h(
            'button',
            {
              type: 'button',
              class: 'ghost',
              onclick: () => {
                this.editing = undefined;
                this.render();
              },
            },
            'Cancel',
          ),
          h('button', { type: 'submit', class: 'primary', testid: 'edit-save' }, 'Save'),
        ),
      );
    } else {
      const b = bodyText(m.body);
      content = h(
        'p',
        { class: b.json ? 'text json' : 'text' },
        h('span', { testid: 'message-text' }, ...(b.json ? [b.text] : linkify(b.text))),
        m.edited !== undefined &&
          h('span', { class: 'edited', testid: 'message-edited', title: new Date(m.edited).toLocaleString() }, '(edited)'),
      );
    }

    const reactions = m.reactions
      ? Object.entries(m.reactions).map(([key, v]) =>
          h(
            'button',
            {
              class: v.me ? 'chip mine' : 'chip',
              testid: 'reaction',
              'data-key': key,
              'data-count': v.count,
              'data-mine': String(v.me),
              'aria-pressed': v.me ? 'true' : 'false',
              title: v.me ? 'Remove your reaction' : 'React',
              onclick: () => this.toggleReaction(m, key),
            },
            h('span', { class: 'emoji' }, key),
            h('span', { testid: 'reaction-count' }, v.count),
          ),
        )
      : [];

    const actions =
      !m.deleted &&
      !editing &&
      h(
        'div',
        { class: 'actions', role: 'toolbar', 'aria-label': 'Message actions' },
        ...EMOJI.map((k) =>
          h(
            'button',
            { class: 'icon', testid: 'action-react', 'data-key': k, title: `React ${k}`, onclick: () => this.toggleReaction(m, k) },
            k,
          ),
        ),
        h('button', {
          class: 'icon txt',
          testid: 'action-reply',
          title: 'Reply',
          onclick: () => {
            this.replyTo = m.msg;
            this.render();
            this.el.input.focus();
          },
        }, 'Reply'),
        o.mine && h('button', { class: 'icon txt', testid: 'action-edit', title: 'Edit', onclick: () => this.startEdit(m) }, 'Edit'),
        o.mine &&
          h(
            'button',
            {
              class: this.confirmDelete === m.msg ? 'icon txt danger' : 'icon txt',
              testid: 'action-delete',
              title: 'Delete',
              onclick: () => this.remove(m),
            },
            this.confirmDelete === m.msg ? 'Delete?' : 'Delete',
          ),
      );

    const q = o.quoted;
    const quote =
      m.reply_to &&
      h(
        'button',
        {
          class: 'quote',
          testid: 'message-reply',
          'data-reply-to': m.reply_to,
          onclick: () => this.rows.get(m.reply_to!)?.el.scrollIntoView({ block: 'center', behavior: 'smooth' }),
        },
        '↪ ',
        q ? h('strong', null, this.nameOf(q.from)) : 'an earlier message',
        q && ' ',
        q && snippet(q),
      );

    return h(
      'li',
      { class: 'row', 'data-msg-id': m.msg },
      o.newDay && h('div', { class: 'day', role: 'separator' }, h('span', null, dayLabel(m.ts))),
      h(
        'article',
        {
          class: `msg${o.cont ? ' cont' : ''}${o.mine ? ' mine' : ''}${m.deleted ? ' is-deleted' : ''}${editing ? ' editing' : ''}`,
          testid: 'message',
          'data-msg-id': m.msg,
          'data-from': m.from,
          'data-author': name,
          'data-edited': String(m.edited !== undefined),
          'data-deleted': String(m.deleted === true),
        },
        o.cont ? h('time', { class: 'side-time', title: full }, clock(m.ts)) : this.avatar(name),
        h(
          'div',
          { class: 'main' },
          !o.cont &&
            h(
              'div',
              { class: 'meta' },
              h('span', { class: 'name', testid: 'message-author' }, name),
              h('time', { title: full, datetime: new Date(m.ts).toISOString() }, clock(m.ts)),
            ),
          quote,
          content,
          reactions.length > 0 && h('div', { class: 'reactions' }, ...reactions),
          o.seen && h('div', { class: 'seen', testid: 'seen-by' }, `Seen by ${people(o.seen)}`),
        ),
        actions,
      ),
    );
  }

  private pendingRow(p: Pending): HTMLElement {
    const text = bodyText(p.body).text;
    return h(
      'li',
      { class: 'row' },
      h(
        'article',
        { class: `msg mine pending${p.failed ? ' failed' : ''}`, testid: 'pending-message', 'data-state': p.failed ? 'failed' : 'sending' },
        this.avatar(this.id.name),
        h(
          'div',
          { class: 'main' },
          h('div', { class: 'meta' }, h('span', { class: 'name' }, this.id.name)),
          h('p', { class: 'text' }, h('span', { testid: 'pending-text' }, text)),
          h(
            'div',
            { class: 'pending-state' },
            p.failed
              ? [
                  h('span', null, `Not sent: ${p.failed}`),
                  h('button', { class: 'link', testid: 'pending-retry', onclick: () => (this.dispatch(p), this.render()) }, 'Retry'),
                  h('button', { class: 'link', onclick: () => this.dropPending(p) }, 'Discard'),
                ]
              : this.client.state === 'connected'
                ? 'Sending…'
                : 'Waiting for the connection…',
          ),
        ),
      ),
    );
  }
}

function snippet(m: HistoryMessage): string {
  if (m.deleted) return '(deleted)';
  const t = bodyText(m.body).text.replace(/\s+/g, ' ');
  return t.length > 80 ? `${t.slice(0, 79)}…` : t;
}

/** Text with http(s) links as anchors: text nodes and elements only, never HTML. */
function linkify(text: string): Child[] {
  const out: Child[] = [];
  const re = /\bhttps?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]]/g;
  let last = 0;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    if (m.index > last) out.push(text.slice(last, m.index));
    out.push(h('a', { href: m[0], target: '_blank', rel: 'noopener noreferrer' }, m[0]));
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

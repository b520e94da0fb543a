/**
 * The chat screen: one ChatClient, one RoomView per room, and the DOM kept in
 * step with them. User text only ever reaches the DOM as text nodes.
 *
 * This file wires it together: the client's events into the rooms' state,
 * joins and history pages, adding, leaving and selecting rooms, and one
 * redraw of every part after each burst of events. The parts: status.ts (the
 * connection), sidebar.ts (rooms, people, me), message-list.ts and
 * message-row.ts (the messages), message-actions.ts (edit, delete, react),
 * composer.ts (send, reply, typing), outbox.ts (sends not yet confirmed),
 * read-markers.ts (read markers, "Seen by").
 */
import { ChatClient, compareIds } from '../../js/src/index.js';
import type { HistoryMessage, Json, RoomEvent } from '../../js/src/index.js';
import { Composer } from './composer.js';
import { h } from './dom.js';
import { bodyName } from './format.js';
import { MessageActions } from './message-actions.js';
import { MessageList } from './message-list.js';
import { nothing, Room, type Identity } from './model.js';
import { Outbox } from './outbox.js';
import { ReadMarkers } from './read-markers.js';
import type { Settings } from './settings.js';
import { Sidebar } from './sidebar.js';
import { ConnectionStatus } from './status.js';
import { save } from './store.js';

export type { Identity } from './model.js';

const PAGE = 50;
const TYPING_SHOW_MS = 5_000;

export class ChatApp {
  readonly client: ChatClient;
  readonly rooms = new Map<string, Room>();
  private current!: Room;
  private readonly names = new Map<string, string>();
  private dirty = false;
  private ticker: ReturnType<typeof setInterval> | undefined;
  private toastTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly off: Array<() => void> = [];

  // The parts of the screen.
  readonly status = new ConnectionStatus(this);
  readonly sidebar = new Sidebar(this);
  readonly messages = new MessageList(this);
  readonly actions = new MessageActions(this);
  readonly composer = new Composer(this);
  readonly outbox = new Outbox(this);
  readonly reading = new ReadMarkers(this);

  private readonly el = {
    title: h('h1', { testid: 'room-title' }),
    subtitle: h('span', { class: 'subtitle' }),
    toast: h('div', { class: 'toast', testid: 'toast', role: 'alert', hidden: true }),
    shell: h('div', { class: 'shell' }),
  };

  constructor(
    root: HTMLElement,
    settings: Settings,
    readonly id: Identity,
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

  /** The room on screen. */
  get active(): Room {
    return this.current;
  }

  // ------------------------------------------------------------ layout

  private buildShell(root: HTMLElement): void {
    const e = this.el;
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
        this.status.headDot,
      ),
      this.status.banner,
      this.messages.build(),
      this.messages.jump,
      this.composer.build(),
    );
    const scrim = h('div', { class: 'scrim', onclick: () => this.closeNav() });
    e.shell.append(this.sidebar.build(this.status.el), main, scrim, e.toast);
    root.replaceChildren(e.shell);
    this.off.push(this.reading.listen());
  }

  /** Hides the sidebar again on narrow screens. */
  closeNav(): void {
    this.el.shell.classList.remove('nav-open');
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
        this.status.disconnected(delayMs);
        for (const r of this.rooms.values()) if (r.state === 'joined') r.state = 'joining';
        this.render();
      }),
    );
    on(
      c.on('closed', (ev) => {
        if (ev.cause === 'unauthorized' && !this.id.token) {
          // A guest refused at `auth`: the client stopped at once (no retries).
          this.destroy();
          return this.onExit('This gateway does not accept guests: sign in with a token.');
        }
        this.status.closed(ev);
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
    if (ev.op === 'msg' && r !== this.current && ev.from !== this.client.user) r.unread++;
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

  // ------------------------------------------------------------ history

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

  /** The page before the oldest message of the current room ("Load older", scrolling to the top). */
  async loadOlder(): Promise<void> {
    const r = this.current;
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

  addRoom(name: string, persist: boolean): Room {
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

  leaveRoom(r: Room): void {
    if (this.rooms.size < 2) return;
    this.rooms.delete(r.name);
    void this.client.leave(r.name);
    this.outbox.dropRoom(r.name);
    if (r === this.current) this.select(this.rooms.values().next().value!);
    this.persistRooms();
    this.render();
  }

  /** "Join again" after a failed join or a removal. */
  retryRoom(r: Room): void {
    r.state = 'joining';
    r.error = '';
    this.client.join(r.name).catch(nothing);
    if (this.client.state === 'connected') this.afterJoin(r);
    this.render();
  }

  private persistRooms(): void {
    save('rooms', JSON.stringify([...this.rooms.keys()]));
  }

  select(r: Room): void {
    if (this.current === r) return;
    this.current = r;
    r.unread = 0;
    this.actions.reset();
    this.composer.roomChanged(r);
    this.render();
  }

  // ------------------------------------------------------------ the rest

  toast(text: string): void {
    const t = this.el.toast;
    t.textContent = text;
    t.hidden = false;
    clearTimeout(this.toastTimer);
    this.toastTimer = setTimeout(() => (t.hidden = true), 5000);
  }

  signOut(): void {
    this.client.close();
    this.destroy();
    this.onExit();
  }

  private destroy(): void {
    clearInterval(this.ticker);
    this.composer.destroy();
    this.reading.destroy();
    clearTimeout(this.toastTimer);
    for (const f of this.off.splice(0)) f();
  }

  /** Remembers the display name a message body carries for its author. */
  private learn(user: string, body: Json | undefined): void {
    const n = bodyName(body);
    if (n) this.names.set(user, n);
  }

  /** The display name of `user`: mine, the last one seen in their messages, else the id. */
  nameOf(user: string): string {
    if (user === this.client.user) return this.id.name;
    return this.names.get(user) ?? user;
  }

  // ------------------------------------------------------------ rendering

  /** Renders once after the current burst of events. */
  render(): void {
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
    this.status.draw();
    this.sidebar.draw();
    this.drawTitle();
    this.messages.draw();
    this.composer.drawTyping();
    this.composer.draw();
    this.reading.schedule();
  }

  private drawTitle(): void {
    const r = this.current;
    this.el.title.textContent = `#${r.name}`;
    this.el.subtitle.textContent =
      this.client.state !== 'connected'
        ? 'offline'
        : r.state === 'joined'
          ? `${r.presence.size} online`
          : r.state === 'joining'
            ? 'joining…'
            : 'not joined';
  }
}

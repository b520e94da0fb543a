/**
 * The sidebar: the brand, the connection status, the rooms (select, leave,
 * unread counts, add one by name), who is in the current room, and me with
 * "Sign out". On narrow screens it slides in (`nav-open` on the shell).
 */
import type { ChatApp } from './app.js';
import { h } from './dom.js';
import { ROOM_RE } from './settings.js';
import { avatar } from './widgets.js';

export class Sidebar {
  private readonly roomList = h('ul', { class: 'room-list', testid: 'room-list' });
  private readonly roomInput = h('input', {
    testid: 'room-input',
    placeholder: 'Add a room…',
    maxlength: 128,
    'aria-label': 'Room name',
    autocomplete: 'off',
  });
  private readonly peopleHead = h('h2', null);
  private readonly people = h('ul', { class: 'people', testid: 'presence' });
  private readonly me = h('div', { class: 'me', testid: 'me' });

  constructor(private readonly app: ChatApp) {}

  /** The sidebar element, with `status` (the connection status line) under the brand. */
  build(status: HTMLElement): HTMLElement {
    const addRoom = h(
      'form',
      {
        class: 'add-room',
        testid: 'add-room',
        onsubmit: (ev) => {
          ev.preventDefault();
          const name = this.roomInput.value.trim();
          if (!ROOM_RE.test(name)) return this.app.toast('Room names are 1–128 of A–Z a–z 0–9 _ . : -');
          this.roomInput.value = '';
          this.app.select(this.app.addRoom(name, true));
          this.app.closeNav();
        },
      },
      this.roomInput,
      h('button', { type: 'submit', class: 'icon', title: 'Add room', 'aria-label': 'Add room' }, '+'),
    );
    return h(
      'aside',
      { class: 'sidebar', testid: 'sidebar' },
      h('div', { class: 'brand' }, h('div', { class: 'logo', 'aria-hidden': 'true' }), h('span', null, 'Chat')),
      status,
      h('section', null, h('h2', null, 'Rooms'), this.roomList, addRoom),
      h('section', { class: 'grow' }, this.peopleHead, this.people),
      this.me,
    );
  }

  draw(): void {
    this.drawRooms();
    this.drawPeople();
  }

  private drawRooms(): void {
    const app = this.app;
    const items = [...app.rooms.values()].map((r) =>
      h(
        'li',
        null,
        h(
          'button',
          {
            class: `room${r === app.active ? ' active' : ''}${r.state === 'failed' ? ' failed' : ''}`,
            testid: 'room',
            'data-room': r.name,
            'aria-current': r === app.active ? 'true' : null,
            onclick: () => {
              app.select(r);
              app.closeNav();
            },
          },
          h('span', { class: 'hash' }, '#'),
          h('span', { class: 'room-name' }, r.name),
          r.unread > 0 && h('span', { class: 'badge', testid: 'unread' }, r.unread > 99 ? '99+' : r.unread),
        ),
        app.rooms.size > 1 &&
          h(
            'button',
            {
              class: 'icon leave',
              title: `Leave #${r.name}`,
              'aria-label': `Leave ${r.name}`,
              testid: 'leave-room',
              onclick: () => app.leaveRoom(r),
            },
            '×',
          ),
      ),
    );
    this.roomList.replaceChildren(...items);

    const me = app.client.user ?? '';
    this.me.replaceChildren(
      avatar(app.id.name),
      h(
        'div',
        { class: 'who' },
        h('strong', null, app.id.name),
        h('small', { testid: 'me-id' }, me || (app.id.token ? 'signed in' : 'guest')),
      ),
      h('button', { class: 'ghost', testid: 'sign-out', onclick: () => app.signOut() }, 'Sign out'),
    );
  }

  /** Who is in the current room: me first, then by name. */
  private drawPeople(): void {
    const app = this.app;
    const r = app.active;
    const me = app.client.user;
    const users = [...r.presence].sort((a, b) =>
      a === me ? -1 : b === me ? 1 : app.nameOf(a).localeCompare(app.nameOf(b)),
    );
    this.peopleHead.textContent = `In #${r.name} — ${users.length}`;
    this.people.replaceChildren(
      ...users.map((u) =>
        h(
          'li',
          { testid: 'presence-user', 'data-user': u, title: u },
          h('span', { class: 'pres' }, avatar(app.nameOf(u), true), h('i', { class: 'online' })),
          h('span', { class: 'pname' }, app.nameOf(u)),
          u === me && h('small', null, 'you'),
        ),
      ),
    );
  }
}

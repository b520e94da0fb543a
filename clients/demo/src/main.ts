/** Entry point: the sign-in card, then the chat screen. */
import { ChatApp, type Identity } from './app.js';
import { h } from './dom.js';
import { jwtClaims, readSettings, ROOM_RE, type Settings } from './settings.js';
import { load, save } from './store.js';

const settings = readSettings(location);
const root = document.getElementById('app')!;

function storedRooms(): string[] {
  try {
    const v = JSON.parse(load('rooms') ?? '[]');
    return Array.isArray(v) ? v.filter((r): r is string => typeof r === 'string' && ROOM_RE.test(r)) : [];
  } catch {
    return [];
  }
}

function start(s: Settings, id: Identity, room: string): void {
  save('name', id.name);
  const rooms = [room, ...storedRooms().filter((r) => r !== room)];
  new ChatApp(root, s, id, rooms, (error) => signIn(error));
}

function tokenIdentity(token: string, name?: string): Identity {
  const c = jwtClaims(token);
  return { token, name: name || (typeof c.name === 'string' && c.name) || (typeof c.sub === 'string' && c.sub) || 'me' };
}

function signIn(error?: string): void {
  const name = h('input', {
    testid: 'login-name',
    id: 'login-name',
    maxlength: 40,
    autocomplete: 'nickname',
    placeholder: 'e.g. Alice',
    value: settings.name ?? load('name') ?? '',
  });
  const room = h('input', {
    testid: 'login-room',
    id: 'login-room',
    maxlength: 128,
    autocomplete: 'off',
    value: settings.room ?? storedRooms()[0] ?? 'lobby',
  });
  const token = h('textarea', {
    testid: 'login-token',
    rows: 3,
    placeholder: 'eyJhbGciOi…',
    spellcheck: 'false',
    'aria-label': 'Token (JWT)',
  });
  const err = h('p', { class: 'error', testid: 'login-error', role: 'alert' }, error ?? '');
  const go = (withToken: boolean) => {
    const r = room.value.trim() || 'lobby';
    if (!ROOM_RE.test(r)) return void (err.textContent = 'Room names are 1–128 of A–Z a–z 0–9 _ . : -');
    const n = name.value.trim().slice(0, 40);
    if (withToken) {
      const t = token.value.trim();
      if (!t) return void (err.textContent = 'Paste a token first.');
      return start(settings, tokenIdentity(t, n), r);
    }
    if (!n) return void (err.textContent = 'Pick a display name.');
    start(settings, { name: n }, r);
  };
  const card = h(
    'form',
    { class: 'login', testid: 'login', onsubmit: (ev) => (ev.preventDefault(), go(false)) },
    h('div', { class: 'brand' }, h('div', { class: 'logo', 'aria-hidden': 'true' }), h('span', null, 'Chat')),
    h('p', { class: 'lead' }, 'Pick a name and jump in. Guests get a fresh id on every connection.'),
    h('label', { for: 'login-name' }, 'Display name'),
    name,
    h('label', { for: 'login-room' }, 'Room'),
    room,
    err,
    h('button', { type: 'submit', class: 'primary wide', testid: 'login-guest' }, 'Join as guest'),
    h(
      'details',
      null,
      h('summary', null, 'Sign in with a token instead'),
      token,
      h(
        'button',
        { type: 'button', class: 'wide', testid: 'login-token-submit', onclick: () => go(true) },
        'Sign in with token',
      ),
    ),
    h('p', { class: 'fine' }, `Gateway: ${settings.gateways.join(', ')}`),
  );
  root.replaceChildren(h('div', { class: 'login-wrap' }, card));
  name.focus();
}

if (settings.token) start(settings, tokenIdentity(settings.token, settings.name), settings.room ?? storedRooms()[0] ?? 'lobby');
else signIn();

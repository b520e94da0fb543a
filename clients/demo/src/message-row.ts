/**
 * A message as a row of the list: the date separator when the day changes;
 * the avatar, or the time when grouped under the previous message; name and
 * time; the message it replies to; its text (or the edit form, or "deleted");
 * reaction chips; "Seen by"; and the toolbar (react, reply, edit, delete).
 * And a pending send as a row of the pending list.
 */
import type { HistoryMessage } from '../../js/src/index.js';
import type { ChatApp } from './app.js';
import { h, type Child } from './dom.js';
import { bodyText, clock, dayLabel, people } from './format.js';
import type { Pending } from './outbox.js';
import { avatar, linkify, snippet } from './widgets.js';

const EMOJI = ['👍', '❤️', '😂', '🎉', '😮'];

/** Where a message sits in the list, as the list works it out. */
export interface Place {
  /** First message of its day: a date separator above it. */
  newDay: boolean;
  /** Grouped under the previous message (same author, within 5 min): no name, no avatar. */
  cont: boolean;
  /** The message it replies to, if loaded. */
  quoted: HistoryMessage | undefined;
  /** Other users whose read marker is at it. */
  seen: string[] | undefined;
  mine: boolean;
}

export function messageRow(app: ChatApp, m: HistoryMessage, o: Place): HTMLElement {
  const name = app.nameOf(m.from);
  const full = new Date(m.ts).toLocaleString();
  const editing = app.actions.editing === m.msg;
  const content: Child = m.deleted
    ? h('p', { class: 'text deleted', testid: 'message-deleted' }, 'This message was deleted.')
    : editing
      ? app.actions.form(m)
      : text(m);
  const reactions = chips(app, m);
  const actions = !m.deleted && !editing && toolbar(app, m, o.mine);
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
      o.cont ? h('time', { class: 'side-time', title: full }, clock(m.ts)) : avatar(name),
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
        m.reply_to && quote(app, m, o.quoted),
        content,
        reactions.length > 0 && h('div', { class: 'reactions' }, ...reactions),
        o.seen && h('div', { class: 'seen', testid: 'seen-by' }, `Seen by ${people(o.seen)}`),
      ),
      actions,
    ),
  );
}

/** The body: text with links, or JSON; "(edited)" after it. */
function text(m: HistoryMessage): HTMLElement {
  const b = bodyText(m.body);
  return h(
    'p',
    { class: b.json ? 'text json' : 'text' },
    h('span', { testid: 'message-text' }, ...(b.json ? [b.text] : linkify(b.text))),
    m.edited !== undefined &&
      h('span', { class: 'edited', testid: 'message-edited', title: new Date(m.edited).toLocaleString() }, '(edited)'),
  );
}

/** A chip per reaction, with its count; highlighted when it is mine; a click toggles mine. */
function chips(app: ChatApp, m: HistoryMessage): HTMLElement[] {
  if (!m.reactions) return [];
  return Object.entries(m.reactions).map(([key, v]) =>
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
        onclick: () => app.actions.toggleReaction(m, key),
      },
      h('span', { class: 'emoji' }, key),
      h('span', { testid: 'reaction-count' }, v.count),
    ),
  );
}

/** React with a few emoji, reply; edit and delete my own. */
function toolbar(app: ChatApp, m: HistoryMessage, mine: boolean): HTMLElement {
  const confirm = app.actions.confirmDelete === m.msg;
  return h(
    'div',
    { class: 'actions', role: 'toolbar', 'aria-label': 'Message actions' },
    ...EMOJI.map((k) =>
      h(
        'button',
        {
          class: 'icon',
          testid: 'action-react',
          'data-key': k,
          title: `React ${k}`,
          onclick: () => app.actions.toggleReaction(m, k),
        },
        k,
      ),
    ),
    h(
      'button',
      { class: 'icon txt', testid: 'action-reply', title: 'Reply', onclick: () => app.composer.reply(m) },
      'Reply',
    ),
    mine &&
      h(
        'button',
        { class: 'icon txt', testid: 'action-edit', title: 'Edit', onclick: () => app.actions.startEdit(m) },
        'Edit',
      ),
    mine &&
      h(
        'button',
        {
          class: confirm ? 'icon txt danger' : 'icon txt',
          testid: 'action-delete',
          title: 'Delete',
          onclick: () => app.actions.remove(m),
        },
        confirm ? 'Delete?' : 'Delete',
      ),
  );
}

/** "↪ alice what she said", or "an earlier message" when it is not loaded; a click shows it. */
function quote(app: ChatApp, m: HistoryMessage, q: HistoryMessage | undefined): HTMLElement {
  return h(
    'button',
    {
      class: 'quote',
      testid: 'message-reply',
      'data-reply-to': m.reply_to,
      onclick: () => app.messages.reveal(m.reply_to!),
    },
    '↪ ',
    q ? h('strong', null, app.nameOf(q.from)) : 'an earlier message',
    q && ' ',
    q && snippet(q),
  );
}

export function pendingRow(app: ChatApp, p: Pending): HTMLElement {
  const text = bodyText(p.body).text;
  return h(
    'li',
    { class: 'row' },
    h(
      'article',
      {
        class: `msg mine pending${p.failed ? ' failed' : ''}`,
        testid: 'pending-message',
        'data-state': p.failed ? 'failed' : 'sending',
      },
      avatar(app.id.name),
      h(
        'div',
        { class: 'main' },
        h('div', { class: 'meta' }, h('span', { class: 'name' }, app.id.name)),
        h('p', { class: 'text' }, h('span', { testid: 'pending-text' }, text)),
        h(
          'div',
          { class: 'pending-state' },
          p.failed
            ? [
                h('span', null, `Not sent: ${p.failed}`),
                h(
                  'button',
                  { class: 'link', testid: 'pending-retry', onclick: () => (app.outbox.dispatch(p), app.render()) },
                  'Retry',
                ),
                h('button', { class: 'link', onclick: () => app.outbox.drop(p) }, 'Discard'),
              ]
            : app.client.state === 'connected'
              ? 'Sending…'
              : 'Waiting for the connection…',
        ),
      ),
    ),
  );
}

/**
 * The bottom of the chat: who is typing, the message being replied to, the
 * room's notice (could not join, removed: "Join again"), and the composer.
 * Enter sends, Shift+Enter breaks the line, Esc drops the reply, ArrowUp in
 * an empty composer edits my last message. Typing is sent at most every 3 s.
 */
import type { HistoryMessage, MsgId } from '../../js/src/index.js';
import type { ChatApp } from './app.js';
import { h } from './dom.js';
import { people } from './format.js';
import type { Room } from './model.js';
import { snippet } from './widgets.js';

const TYPING_SEND_MS = 3_000;

export class Composer {
  private readonly typing = h('div', { class: 'typing', testid: 'typing', 'aria-live': 'polite' });
  private readonly replying = h('div', { class: 'replying', testid: 'replying', hidden: true });
  private readonly notice = h('div', { class: 'notice', testid: 'room-notice', hidden: true });
  private readonly input = h('textarea', { testid: 'composer-input', rows: 1, maxlength: 4000, 'aria-label': 'Message' });
  private replyTo: MsgId | undefined;
  private typingSent = 0;
  private typingTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly app: ChatApp) {}

  /** The elements under the message list, in order. */
  build(): HTMLElement[] {
    const form = h(
      'form',
      { class: 'composer', testid: 'composer', onsubmit: (ev) => (ev.preventDefault(), this.submit()) },
      this.input,
      h('button', { type: 'submit', class: 'primary', testid: 'send', title: 'Send (Enter)' }, 'Send'),
    );
    this.input.addEventListener('keydown', (ev) => this.onKey(ev));
    this.input.addEventListener('input', () => this.onInput());
    return [this.typing, this.replying, this.notice, form];
  }

  focus(): void {
    this.input.focus();
  }

  /** Another room is shown: no reply, its name in the placeholder. */
  roomChanged(r: Room): void {
    this.replyTo = undefined;
    this.input.placeholder = `Message #${r.name}`;
  }

  reply(m: HistoryMessage): void {
    this.replyTo = m.msg;
    this.app.render();
    this.input.focus();
  }

  destroy(): void {
    clearTimeout(this.typingTimer);
  }

  private submit(): void {
    const app = this.app;
    const text = this.input.value.trim();
    if (!text) return;
    const r = app.active;
    if (r.state === 'failed') return app.toast(r.error);
    const p = app.outbox.create(r.name, { text, name: app.id.name }, this.replyTo);
    this.input.value = '';
    this.onInput();
    this.replyTo = undefined;
    this.typingSent = 0;
    app.outbox.send(p);
    app.messages.stickToBottom = true;
    app.render();
  }

  private onKey(ev: KeyboardEvent): void {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      this.submit();
    } else if (ev.key === 'Escape' && this.replyTo) {
      this.replyTo = undefined;
      this.app.render();
    } else if (ev.key === 'ArrowUp' && !this.input.value) {
      const me = this.app.client.user;
      const mine = [...this.app.active.view.messages()].reverse().find((m) => m.from === me && !m.deleted);
      if (mine) {
        ev.preventDefault();
        this.app.actions.startEdit(mine);
      }
    }
  }

  /** Grows the composer with its text (up to 160 px); sends `typing`, at most every 3 s. */
  private onInput(): void {
    const t = this.input;
    t.style.height = 'auto';
    t.style.height = `${Math.min(t.scrollHeight, 160)}px`;
    const now = Date.now();
    const r = this.app.active;
    if (t.value.trim() && now - this.typingSent > TYPING_SEND_MS && r.state === 'joined') {
      if (this.app.client.typing(r.name)) this.typingSent = now;
    }
  }

  /** "alice is typing…", until the last typing event of each user expires. */
  drawTyping(): void {
    const app = this.app;
    const r = app.active;
    const now = Date.now();
    const names: string[] = [];
    let next = Infinity;
    for (const [u, until] of r.typers) {
      if (until <= now) r.typers.delete(u);
      else {
        names.push(app.nameOf(u));
        next = Math.min(next, until);
      }
    }
    this.typing.textContent = names.length
      ? `${people(names.sort())} ${names.length > 1 ? 'are' : 'is'} typing…`
      : '';
    clearTimeout(this.typingTimer);
    if (next < Infinity) this.typingTimer = setTimeout(() => app.render(), next - now + 20);
  }

  /** The reply bar and the room's notice. */
  draw(): void {
    const app = this.app;
    const r = app.active;
    const target = this.replyTo ? r.view.get(this.replyTo) : undefined;
    const rep = this.replying;
    rep.hidden = !target;
    if (target) {
      rep.replaceChildren(
        h('span', null, 'Replying to ', h('strong', null, app.nameOf(target.from)), ' ', snippet(target)),
        h(
          'button',
          {
            class: 'icon',
            'aria-label': 'Cancel reply',
            onclick: () => {
              this.replyTo = undefined;
              app.render();
            },
          },
          '×',
        ),
      );
    }
    const n = this.notice;
    n.hidden = r.state !== 'failed';
    if (r.state === 'failed') {
      n.replaceChildren(
        h('span', null, r.error),
        h('button', { testid: 'rejoin', onclick: () => app.retryRoom(r) }, 'Join again'),
      );
    }
  }
}

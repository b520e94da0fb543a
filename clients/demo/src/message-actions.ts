/**
 * Acting on a message: edit my own in place (Enter saves, Esc cancels),
 * delete it (a first click asks "Delete?" for 4 s, a second deletes), and
 * toggle a reaction.
 */
import type { HistoryMessage, Json, MsgId } from '../../js/src/index.js';
import type { ChatApp } from './app.js';
import { h } from './dom.js';
import { bodyName, bodyText } from './format.js';

export class MessageActions {
  /** The message whose edit form is open. */
  editing: MsgId | undefined;
  /** The message whose Delete button asks for confirmation. */
  confirmDelete: MsgId | undefined;
  private draft = '';

  constructor(private readonly app: ChatApp) {}

  /** Closes the edit form and the delete confirmation (another room). */
  reset(): void {
    this.editing = this.confirmDelete = undefined;
  }

  startEdit(m: HistoryMessage): void {
    this.editing = m.msg;
    this.draft = bodyText(m.body).text;
    this.confirmDelete = undefined;
    this.app.render();
    // The form exists after the batched redraw (a microtask queued just
    // now by render), so focus it in the microtask after that.
    queueMicrotask(() => {
      const input = this.app.messages.list.querySelector<HTMLTextAreaElement>('[data-testid="edit-input"]');
      input?.focus();
      input?.setSelectionRange(input.value.length, input.value.length);
    });
  }

  /** The edit form of `m`, in place of its text. */
  form(m: HistoryMessage): HTMLElement {
    const ta = h('textarea', { testid: 'edit-input', rows: 2, maxlength: 4000, 'aria-label': 'Edit message' });
    ta.value = this.draft;
    ta.addEventListener('input', () => (this.draft = ta.value));
    ta.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey) {
        ev.preventDefault();
        this.save(m);
      } else if (ev.key === 'Escape') {
        this.cancel();
      }
    });
    return h(
      'form',
      { class: 'edit', onsubmit: (ev) => (ev.preventDefault(), this.save(m)) },
      ta,
      h(
        'div',
        { class: 'edit-actions' },
        h('small', null, 'Enter to save · Esc to cancel'),
        h('button', { type: 'button', class: 'ghost', onclick: () => this.cancel() }, 'Cancel'),
        h('button', { type: 'submit', class: 'primary', testid: 'edit-save' }, 'Save'),
      ),
    );
  }

  private cancel(): void {
    this.editing = undefined;
    this.app.render();
  }

  private save(m: HistoryMessage): void {
    const app = this.app;
    const text = this.draft.trim();
    this.editing = undefined;
    app.render();
    app.composer.focus();
    if (!text || text === bodyText(m.body).text) return;
    const old = m.body && typeof m.body === 'object' && !Array.isArray(m.body) ? m.body : {};
    const body: Json = { ...old, text, name: bodyName(m.body) ?? app.id.name };
    app.client.edit(app.active.name, m.msg, body).catch((e: Error) => app.toast(`Edit failed: ${e.message}`));
  }

  remove(m: HistoryMessage): void {
    const app = this.app;
    if (this.confirmDelete !== m.msg) {
      this.confirmDelete = m.msg;
      app.render();
      setTimeout(() => {
        if (this.confirmDelete === m.msg) {
          this.confirmDelete = undefined;
          app.render();
        }
      }, 4000);
      return;
    }
    this.confirmDelete = undefined;
    app.client.delete(app.active.name, m.msg).catch((e: Error) => app.toast(`Delete failed: ${e.message}`));
  }

  toggleReaction(m: HistoryMessage, key: string): void {
    const app = this.app;
    const mine = m.reactions?.[key]?.me === true;
    const room = app.active.name;
    (mine ? app.client.unreact(room, m.msg, key) : app.client.react(room, m.msg, key)).catch((e: Error) =>
      app.toast(`Reaction failed: ${e.message}`),
    );
  }
}

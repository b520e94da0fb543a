/**
 * The connection as the page shows it: the status line in the sidebar
 * (`data-state`, `data-node`), the dot in the chat header, and the banner
 * above the messages (reconnect countdown, sends waiting for the connection,
 * why it closed, with "Retry now" or "Sign in again").
 */
import type { ChatClientEvents } from '../../js/src/index.js';
import type { ChatApp } from './app.js';
import { h } from './dom.js';
import { nothing } from './model.js';

export class ConnectionStatus {
  readonly el = h('div', { class: 'status', testid: 'status', role: 'status' });
  /** In the chat header, whose class follows the state. */
  readonly headDot = h('span', { class: 'dot head-dot', testid: 'head-status' });
  readonly banner = h('div', { class: 'banner', testid: 'banner', hidden: true });
  private reconnectAt = 0;
  private closedWhy = '';

  constructor(private readonly app: ChatApp) {}

  /** The socket is gone; the client tries again in `delayMs`. */
  disconnected(delayMs: number | undefined): void {
    this.reconnectAt = Date.now() + (delayMs ?? 0);
  }

  /** The client stopped for good. */
  closed({ cause, code, reason }: ChatClientEvents['closed']): void {
    this.closedWhy =
      cause === 'revoked'
        ? 'disconnected by the server (token revoked or operator action)'
        : cause === 'unauthorized'
          ? 'the token was refused or has expired'
          : cause === 'protocol'
            ? `protocol error (${code}${reason ? `: ${reason}` : ''})`
            : 'signed out';
  }

  draw(): void {
    const c = this.app.client;
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
    const st = this.el;
    st.dataset['state'] = c.state;
    st.dataset['node'] = c.state === 'connected' ? (c.node ?? '') : '';
    st.className = `status ${cls}`;
    this.headDot.parentElement!.className = `chat-head ${cls}`;
    this.headDot.title = text;
    st.replaceChildren(
      h('span', { class: 'dot', 'aria-hidden': 'true' }),
      h('span', { class: 'status-text', testid: 'status-text' }, text),
      detail && h('small', null, detail),
    );

    const waiting = c.pendingSends;
    const b = this.banner;
    b.hidden = c.state === 'connected';
    if (b.hidden) return b.replaceChildren();
    const more = waiting ? ` ${waiting} message${waiting > 1 ? 's' : ''} will be sent when back online.` : '';
    b.className = `banner ${cls}`;
    b.replaceChildren(h('span', null, c.state === 'closed' ? `Connection closed: ${this.closedWhy}.` : `${text}.${more}`));
    if (c.state === 'closed') {
      b.append(h('button', { testid: 'sign-in-again', onclick: () => this.app.signOut() }, 'Sign in again'));
    } else if (c.state === 'disconnected') {
      b.append(h('button', { testid: 'retry', onclick: () => void c.connect().catch(nothing) }, 'Retry now'));
    }
  }
}

/**
 * Messages sent from this page and not yet in their room's view. The client
 * queues a send while offline and delivers it after the reconnect; until its
 * message event arrives the page shows it in the pending list ("Sending…",
 * "Waiting for the connection…", or "Not sent" with Retry and Discard).
 */
import { makeNonce } from '../../js/src/index.js';
import type { Json, MsgId } from '../../js/src/index.js';
import type { ChatApp } from './app.js';

export interface Pending {
  key: number;
  room: string;
  body: Json;
  nonce: string;
  replyTo?: MsgId;
  /** The stored message, once the send was answered. */
  msg?: MsgId;
  /** Why the send was refused. */
  failed?: string;
}

export class Outbox {
  private readonly items: Pending[] = [];
  private seq = 0;

  constructor(private readonly app: ChatApp) {}

  /** A new send of `body` to `room` (with its nonce); `send` sends it. */
  create(room: string, body: Json, replyTo: MsgId | undefined): Pending {
    return { key: ++this.seq, room, body, nonce: makeNonce(), ...(replyTo ? { replyTo } : {}) };
  }

  send(p: Pending): void {
    this.items.push(p);
    this.dispatch(p);
  }

  /** Sends `p` (again, after a failure: same nonce). */
  dispatch(p: Pending): void {
    delete p.failed;
    this.app.client
      .send(p.room, p.body, { nonce: p.nonce, ...(p.replyTo ? { replyTo: p.replyTo } : {}) })
      .then(
        (res) => {
          p.msg = res.msg;
          // Shown as sent once the message event is in the view; at the latest after 2 s.
          setTimeout(() => this.drop(p), 2000);
        },
        (e: Error) => {
          p.failed = e.message;
        },
      )
      .finally(() => this.app.render());
  }

  drop(p: Pending): void {
    const i = this.items.indexOf(p);
    if (i >= 0) this.items.splice(i, 1);
    this.app.render();
  }

  /** Forgets the sends to `room` (left). */
  dropRoom(room: string): void {
    for (let i = this.items.length - 1; i >= 0; i--) if (this.items[i]!.room === room) this.items.splice(i, 1);
  }

  /** Forgets the sends whose message is in its room's view. */
  prune(): void {
    for (let i = this.items.length - 1; i >= 0; i--) {
      const p = this.items[i]!;
      if (p.msg && this.app.rooms.get(p.room)?.view.get(p.msg)) this.items.splice(i, 1);
    }
  }

  inRoom(room: string): Pending[] {
    return this.items.filter((p) => p.room === room);
  }
}

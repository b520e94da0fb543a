/** The state the chat screen is drawn from: who I am and each room I am in. */
import { RoomView } from '../../js/src/index.js';
import type { MsgId } from '../../js/src/index.js';

export interface Identity {
  token?: string;
  name: string;
}

/** A room of the sidebar: its messages (a RoomView) and what the page shows around them. */
export class Room {
  readonly view: RoomView;
  presence = new Set<string>();
  /** User → until when "is typing…" is shown. */
  typers = new Map<string, number>();
  /** User → their read marker. */
  receipts = new Map<string, MsgId>();
  unread = 0;
  /** The latest page of history is in the view. */
  loaded = false;
  /** The view holds the room's whole history. */
  complete = false;
  loadingOlder = false;
  state: 'joining' | 'joined' | 'failed' = 'joining';
  error = '';
  /** My read marker, as last sent or as the join returned it. */
  readSent: MsgId | undefined;
  constructor(readonly name: string) {
    this.view = new RoomView(name);
  }
}

/** For promises whose failure is reported elsewhere (events, the banner). */
export const nothing = () => {};

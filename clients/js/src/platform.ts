/**
 * What the client needs from its platform: a WebSocket constructor and
 * timers, both injectable (the `ws` package in Node 20, fakes in tests).
 */

type Handler<E> = { bivarianceHack(event: E): void }['bivarianceHack'];

/** The part of the WebSocket API the client uses (browsers' `WebSocket` and the `ws` package fit). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: Handler<unknown> | null;
  onmessage: Handler<{ data: unknown }> | null;
  onclose: Handler<{ code: number; reason: string }> | null;
  onerror: Handler<unknown> | null;
}

/** A WebSocket constructor: `new WebSocket(url)`. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Timers, injectable for tests. */
export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  /** Current time, ms. */
  now(): number;
}

interface GlobalTimers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(h: unknown): void;
  WebSocket?: WebSocketConstructor;
}
const g = globalThis as unknown as GlobalTimers;

export const realTimers: Timers = {
  setTimeout: (fn, ms) => g.setTimeout(fn, ms),
  clearTimeout: (h) => g.clearTimeout(h),
  now: () => Date.now(),
};

/** `globalThis.WebSocket`, when the platform has one. */
export function globalWebSocket(): WebSocketConstructor | undefined {
  return g.WebSocket;
}

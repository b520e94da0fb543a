/**
 * Message ids are unsigned 64-bit integers sent as decimal strings; past
 * 2^53 a JavaScript `number` loses precision, so they stay strings here and
 * are compared as numbers written in decimal: by length, then character by
 * character (the server never sends leading zeros).
 */
import type { MsgId } from './types.js';

/** Negative, zero or positive as `a` is below, equal to or above `b` (as integers). */
export function compareIds(a: MsgId, b: MsgId): number {
  const x = strip(a);
  const y = strip(b);
  if (x.length !== y.length) return x.length - y.length;
  return x < y ? -1 : x > y ? 1 : 0;
}

/** The larger of two ids; `undefined` counts as below every id. */
export function maxId(a: MsgId | undefined, b: MsgId | undefined): MsgId | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return compareIds(a, b) >= 0 ? a : b;
}

/** Whether `s` is a decimal id as the server sends them. */
export function isId(s: unknown): s is MsgId {
  return typeof s === 'string' && /^[0-9]{1,20}$/.test(s);
}

function strip(s: string): string {
  let i = 0;
  while (i < s.length - 1 && s.charCodeAt(i) === 48) i++;
  return i ? s.slice(i) : s;
}

const NONCE_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-';

/**
 * A random send nonce: 22 characters of `[A-Za-z0-9_-]` (132 bits), from
 * `crypto.getRandomValues` when the platform has it, else from `random`.
 */
export function makeNonce(random: () => number = Math.random): string {
  const n = 22;
  const bytes = new Uint8Array(n);
  const c = (globalThis as { crypto?: { getRandomValues?(a: Uint8Array): Uint8Array } }).crypto;
  if (c && typeof c.getRandomValues === 'function') c.getRandomValues(bytes);
  else for (let i = 0; i < n; i++) bytes[i] = Math.floor(random() * 256);
  let s = '';
  for (let i = 0; i < n; i++) s += NONCE_ALPHABET[bytes[i]! & 63];
  return s;
}

/** Whether `s` is a valid nonce: 1 to 64 characters of `[A-Za-z0-9_-]`. */
export function isNonce(s: unknown): s is string {
  return typeof s === 'string' && /^[A-Za-z0-9_-]{1,64}$/.test(s);
}

import type { ClientErrorCode, ErrorCode, ServerErrorCode } from './types.js';

const SERVER_CODES: readonly string[] = [
  'bad_request',
  'unauthorized',
  'forbidden',
  'not_found',
  'rate_limited',
  'too_large',
  'unavailable',
  'internal',
];

/** Whether `code` is one the server sends (as opposed to a client-side one). */
export function isServerCode(code: string): code is ServerErrorCode {
  return SERVER_CODES.includes(code);
}

/**
 * The error every request promise rejects with, and the payload of the
 * `error` event.
 *
 * - `source: 'server'`: the server answered with an `error` frame; `code` is
 *   the protocol's (`bad_request`, `unauthorized`, `forbidden`,
 *   `not_found`, `rate_limited`, `too_large`, `unavailable`, `internal`).
 * - `source: 'client'`: raised by this library; `code` is `closed`,
 *   `timeout`, `disconnected` or `cancelled`.
 */
export class GatewayError extends Error {
  override name = 'GatewayError';
  /** The protocol's error code, or a client-side one (see `source`). */
  readonly code: ErrorCode;
  /** Who raised it. */
  readonly source: 'server' | 'client';
  /** The op of the request it answers, when known. */
  readonly op: string | undefined;
  /** The room of the request it answers, when there is one. */
  readonly room: string | undefined;

  constructor(code: ErrorCode, message: string, extra?: { op?: string | undefined; room?: string | undefined }) {
    super(message);
    this.code = code;
    this.source = isServerCode(code) ? 'server' : 'client';
    this.op = extra?.op;
    this.room = extra?.room;
  }

  /** A client-side error. */
  static client(code: ClientErrorCode, message: string, op?: string, room?: string): GatewayError {
    return new GatewayError(code, message, { op, room });
  }
}

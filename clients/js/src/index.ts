/**
 * @chat-gateway/client: a TypeScript client of the chat-gateway WebSocket
 * protocol v1.1 (docs/PROTOCOL.md of the gateway's repository).
 */
export { ChatClient } from './client.js';
export type {
  ChatClientEvents,
  ChatClientOptions,
  ChangeResult,
  ClientState,
  HistoryOptions,
  JoinResult,
  SendOptions,
  SendResult,
  StopCause,
} from './api.js';
export type { Timers, WebSocketConstructor, WebSocketLike } from './platform.js';
export { RoomView } from './room-view.js';
export { GatewayError, isServerCode } from './errors.js';
export { Backoff } from './backoff.js';
export type { BackoffOptions } from './backoff.js';
export { Emitter } from './emitter.js';
export { compareIds, maxId, isId, makeNonce, isNonce } from './ids.js';
export { CloseCodes } from './types.js';
export type * from './types.js';

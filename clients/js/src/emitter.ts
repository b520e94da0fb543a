/**
 * A tiny typed event emitter. `on` returns the function that unsubscribes.
 * A handler that throws does not disturb the emitter or other handlers: the
 * error is rethrown in a microtask (reported like any uncaught error).
 */
export class Emitter<Events extends object> {
  private handlers: { [K in keyof Events]?: Array<(payload: Events[K]) => void> } = {};

  /** Calls `handler` on each `name` event until the returned function is called. */
  on<K extends keyof Events>(name: K, handler: (payload: Events[K]) => void): () => void {
    (this.handlers[name] ??= []).push(handler);
    return () => this.off(name, handler);
  }

  /** Calls `handler` on the next `name` event only. */
  once<K extends keyof Events>(name: K, handler: (payload: Events[K]) => void): () => void {
    const off = this.on(name, (p) => {
      off();
      handler(p);
    });
    return off;
  }

  /** Removes `handler` from `name`. */
  off<K extends keyof Events>(name: K, handler: (payload: Events[K]) => void): void {
    const list = this.handlers[name];
    if (!list) return;
    const i = list.indexOf(handler);
    if (i >= 0) list.splice(i, 1);
  }

  /** Calls every handler of `name` with `payload`. */
  protected emit<K extends keyof Events>(name: K, payload: Events[K]): void {
    const list = this.handlers[name];
    if (!list || list.length === 0) return;
    for (const h of list.slice()) {
      try {
        h(payload);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }

  /** Whether `name` has any handler. */
  protected listens(name: keyof Events): boolean {
    return (this.handlers[name]?.length ?? 0) > 0;
  }
}

declare function queueMicrotask(cb: () => void): void;

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Backoff, type GatewayError } from '../src/index.js';
import { flush, setup, track } from './fake.js';

type Disc = { code: number; willReconnect: boolean; delayMs?: number };

describe('Backoff', () => {
  test('full jitter: random() * min(max, initial * 2^attempt), growing then capped', () => {
    const b = new Backoff({ initialMs: 500, maxMs: 30_000 }, () => 0.999999);
    const got = Array.from({ length: 10 }, () => b.next());
    assert.deepEqual(got, [499, 999, 1999, 3999, 7999, 15999, 29999, 29999, 29999, 29999]);
    b.reset();
    assert.equal(b.next(), 499);
  });

  test('delays stay within [0, ceiling) for any random value', () => {
    let r = 0;
    const values = [0, 0.25, 0.5, 0.75, 0.999];
    const b = new Backoff({ initialMs: 100, maxMs: 1000 }, () => values[r++ % values.length]!);
    for (let n = 0; n < 50; n++) {
      const ceiling = Math.min(1000, 100 * 2 ** n);
      const d = b.next();
      assert.ok(d >= 0 && d < ceiling, `attempt ${n}: ${d} not in [0, ${ceiling})`);
    }
    assert.equal(new Backoff({}, () => 0).next(), 0);
  });
});

describe('reconnect', () => {
  test('backoff grows on failed attempts and resets after an authenticated connection', () => {
    const t = setup({ random: () => 0.999, backoff: { initialMs: 500, maxMs: 4000 } });
    void t.client.connect().catch(() => {});
    const delays: number[] = [];
    for (let i = 0; i < 5; i++) {
      t.sock.serverClose(1006);
      const d = t.of<Disc>('disconnected').pop()!;
      assert.equal(d.willReconnect, true);
      delays.push(d.delayMs!);
      assert.equal(t.client.state, 'disconnected');
      const before = t.sockets.length;
      t.timers.advance(d.delayMs! - 1);
      assert.equal(t.sockets.length, before, 'no attempt before the delay');
      t.timers.advance(1);
      assert.equal(t.sockets.length, before + 1, 'an attempt after the delay');
    }
    assert.deepEqual(delays, [499, 999, 1998, 3996, 3996]);
    t.sock.auth();
    assert.equal(t.client.state, 'connected');
    t.sock.serverClose(1006);
    assert.equal(t.of<Disc>('disconnected').pop()!.delayMs, 499, 'attempt reset after auth ok');
  });

  for (const code of [1001, 4008]) {
    test(`close ${code} reconnects at once with a small jitter, not the backoff`, () => {
      const t = setup({ random: () => 0.999 });
      void t.client.connect();
      // Push the backoff up first.
      for (let i = 0; i < 4; i++) {
        t.sock.serverClose(1006);
        t.timers.advance(t.of<Disc>('disconnected').pop()!.delayMs!);
      }
      assert.equal(t.sockets.length, 5);
      t.sock.serverClose(code, 'draining');
      const d = t.of<Disc>('disconnected').pop()!;
      assert.equal(d.code, code);
      assert.equal(d.delayMs, 249);
      const before = t.sockets.length;
      t.timers.advance(249);
      assert.equal(t.sockets.length, before + 1);
    });
  }

  test('4029 backs off at least rateLimitedDelayMs', () => {
    const t = setup({ random: () => 0 });
    void t.client.connect();
    t.sock.auth();
    t.sock.serverClose(4029, 'rate limited');
    const d = t.of<Disc>('disconnected').pop()!;
    assert.equal(d.delayMs, 5000);
    t.timers.advance(4999);
    assert.equal(t.sockets.length, 1);
    t.timers.advance(1);
    assert.equal(t.sockets.length, 2);
  });

  test('4003 stops for good: state closed, closed event, pending sends rejected, no reconnect', async () => {
    const t = setup();
    void t.client.connect();
    t.sock.auth();
    const s = track(t.client.send('r1', 'hi'));
    t.sock.serverClose(4003, 'disconnected by operator');
    await flush();
    assert.equal(t.client.state, 'closed');
    assert.deepEqual(t.of('closed'), [{ cause: 'revoked', code: 4003, reason: 'disconnected by operator' }]);
    assert.equal(t.of<Disc>('disconnected').pop()!.willReconnect, false);
    assert.equal((s.error as { code: string }).code, 'closed');
    t.timers.advance(10 * 60_000);
    assert.equal(t.sockets.length, 1);
  });

  for (const code of [1008, 1009]) {
    test(`${code} stops (a client bug)`, () => {
      const t = setup();
      void t.client.connect().catch(() => {});
      t.sock.auth();
      t.sock.serverClose(code);
      assert.equal(t.client.state, 'closed');
      assert.equal(t.of<{ cause: string }>('closed')[0]!.cause, 'protocol');
      t.timers.advance(60_000);
      assert.equal(t.sockets.length, 1);
    });
  }

  test('close() stops, rejects pending requests and the connect promise', async () => {
    const t = setup();
    const c = track(t.client.connect());
    t.client.close();
    await flush();
    assert.equal(t.client.state, 'closed');
    assert.equal((c.error as { code: string }).code, 'closed');
    assert.deepEqual(t.sockets[0]!.closedWith, { code: 1000, reason: 'client closed' });
    t.timers.advance(60_000);
    assert.equal(t.sockets.length, 1);
  });

  test('connect() while waiting to reconnect tries at once', async () => {
    const t = setup({ random: () => 0.999 });
    void t.client.connect();
    t.sock.serverClose(1006);
    assert.equal(t.sockets.length, 1);
    const c = track(t.client.connect());
    assert.equal(t.sockets.length, 2);
    assert.equal(t.client.state, 'connecting');
    t.sock.auth('u9');
    await flush();
    assert.deepEqual(c.value, { user: 'u9', node: 'gw-0' });
    t.timers.advance(60_000);
    assert.equal(t.sockets.length, 2, 'the old timer was cancelled');
  });

  test('each attempt takes the next url in turn', () => {
    const t = setup({ urls: ['ws://a/ws', 'ws://b/ws', 'ws://c/ws'], random: () => 0 });
    void t.client.connect();
    for (let i = 0; i < 4; i++) {
      t.sock.serverClose(1006);
      t.timers.advance(0);
    }
    assert.deepEqual(
      t.sockets.map((s) => s.url),
      ['ws://a/ws', 'ws://b/ws', 'ws://c/ws', 'ws://a/ws', 'ws://b/ws'],
    );
  });

  test('open + auth that takes longer than requestTimeoutMs is dropped and retried', () => {
    const t = setup({ random: () => 0, requestTimeoutMs: 1000 });
    void t.client.connect();
    t.sock.open(); // auth sent, never answered
    t.timers.advance(1000);
    assert.equal(t.of<Disc>('disconnected').pop()!.code, 1006);
    t.timers.advance(0);
    assert.equal(t.sockets.length, 2);
  });

  test('application ping after silence; no pong drops the connection', () => {
    const t = setup({ pingIntervalMs: 30_000, requestTimeoutMs: 5_000, random: () => 0 });
    void t.client.connect();
    t.sock.auth();
    t.timers.advance(29_999);
    assert.equal(t.sock.ops('ping').length, 0);
    t.timers.advance(1);
    assert.equal(t.sock.ops('ping').length, 1);
    assert.deepEqual(t.timers.pending(), [5_000, 30_000], 'only the ping timeout and the next check');
    t.sock.reply('ping', {}, 'pong');
    t.timers.advance(30_000);
    assert.equal(t.sock.ops('ping').length, 2);
    t.timers.advance(4_999);
    assert.equal(t.client.state, 'connected');
    t.timers.advance(1); // no pong: dropped, and (delay 0) a new attempt
    assert.equal(t.of<Disc>('disconnected').pop()!.code, 1006);
    assert.deepEqual(t.of<{ state: string }>('state').map((s) => s.state).slice(-3), ['connected', 'disconnected', 'connecting']);
    assert.equal(t.sockets.length, 2);
    assert.ok(t.sockets[0]!.closedWith, 'the dead socket was closed');
  });
});

describe('auth', () => {
  test('guest: auth without token; connected event and getters', async () => {
    const t = setup();
    const c = track(t.client.connect());
    assert.equal(t.client.state, 'connecting');
    t.sock.open();
    assert.deepEqual(t.sock.sent, [{ op: 'auth', id: 1 }]);
    t.sock.reply('auth', { user: 'guest-1', node: 'gw-3' });
    await flush();
    assert.deepEqual(c.value, { user: 'guest-1', node: 'gw-3' });
    assert.equal(t.client.user, 'guest-1');
    assert.equal(t.client.node, 'gw-3');
    assert.deepEqual(t.of('connected'), [{ user: 'guest-1', node: 'gw-3', url: 'ws://gw/ws' }]);
    assert.deepEqual(
      t.of<{ state: string }>('state').map((s) => s.state),
      ['connecting', 'connected'],
    );
  });

  test('4001 asks getToken for a new token, then reconnects with it', async () => {
    let n = 0;
    const t = setup({ getToken: async () => `tok-${++n}`, random: () => 0 });
    void t.client.connect();
    await flush();
    t.sock.open();
    assert.equal(t.sock.last('auth').token, 'tok-1');
    t.sock.reply('auth', { user: 'u1', node: 'gw-0', expires_in: 3600 });
    t.sock.receive({ op: 'error', code: 'unauthorized', message: 'token expired' });
    t.sock.serverClose(4001, 'unauthorized');
    const failed = t.of<{ willRetry: boolean; error: { code: string } }>('authFailed');
    assert.equal(failed.length, 1);
    assert.equal(failed[0]!.willRetry, true);
    assert.equal(failed[0]!.error.code, 'unauthorized');
    t.timers.advance(0);
    await flush();
    assert.equal(t.sockets.length, 2);
    t.sock.open();
    assert.equal(t.sock.last('auth').token, 'tok-2');
    // A close that is not 4001 keeps the token.
    t.sock.auth();
    t.sock.serverClose(1006);
    t.timers.advance(0);
    await flush();
    t.sock.open();
    assert.equal(t.sock.last('auth').token, 'tok-2');
    assert.equal(n, 2);
  });

  test('4001 with a fixed token and no getToken stops', () => {
    const t = setup({ token: 'jwt' });
    void t.client.connect().catch(() => {});
    t.sock.open();
    assert.equal(t.sock.last('auth').token, 'jwt');
    t.sock.reply('auth', { code: 'unauthorized', message: 'bad signature' }, 'error');
    t.sock.serverClose(4001, 'unauthorized');
    assert.equal(t.client.state, 'closed');
    assert.equal(t.of<{ cause: string }>('closed')[0]!.cause, 'unauthorized');
    const f = t.of<{ willRetry: boolean; error: { message: string } }>('authFailed')[0]!;
    assert.equal(f.willRetry, false);
    assert.equal(f.error.message, 'bad signature');
  });

  test('a guest refused at auth (unauthorized, then 4001) stops: authFailed without retry, closed unauthorized', async () => {
    const t = setup();
    const c = track(t.client.connect());
    t.sock.open();
    assert.deepEqual(t.sock.last('auth'), { op: 'auth', id: 1 });
    t.sock.reply('auth', { code: 'unauthorized', message: 'no token given and anonymous access is off' }, 'error');
    t.sock.serverClose(4001, 'unauthorized');
    await flush();
    const f = t.of<{ willRetry: boolean; error: GatewayError }>('authFailed');
    assert.equal(f.length, 1);
    assert.equal(f[0]!.willRetry, false);
    assert.equal(f[0]!.error.code, 'unauthorized');
    assert.equal(f[0]!.error.message, 'no token given and anonymous access is off');
    assert.equal(t.client.state, 'closed');
    assert.deepEqual(t.of('closed'), [{ cause: 'unauthorized', code: 4001, reason: 'unauthorized' }]);
    assert.equal((c.error as GatewayError).code, 'closed');
    t.timers.advance(10 * 60_000);
    assert.equal(t.sockets.length, 1, 'no retry');
  });

  test('a guest whose auth timed out (4001 with no error reply) reconnects', () => {
    const t = setup({ random: () => 0 });
    void t.client.connect();
    t.sock.open();
    t.sock.serverClose(4001, 'authentication timeout');
    assert.equal(t.of('authFailed').length, 0);
    assert.equal(t.of('closed').length, 0);
    assert.equal(t.of<Disc>('disconnected').pop()!.willReconnect, true);
    t.timers.advance(0);
    assert.equal(t.sockets.length, 2);
    t.sock.auth('guest-2');
    assert.equal(t.client.state, 'connected');
  });

  test('refresh is sent before expires_in runs out, on the same connection', async () => {
    let n = 0;
    const t = setup({ getToken: async () => `tok-${++n}` });
    void t.client.connect();
    await flush();
    t.sock.auth('u1', { expires_in: 60 });
    // min(60 * 0.8, 60 - 10) = 48 s
    t.timers.advance(47_999);
    await flush();
    assert.equal(t.sock.ops('refresh').length, 0);
    t.timers.advance(1);
    await flush();
    assert.deepEqual(t.sock.last('refresh'), { op: 'refresh', token: 'tok-2', id: t.sock.last('refresh').id });
    t.sock.reply('refresh', { expires_in: 600 });
    // next at min(480, 590) = 480 s
    t.timers.advance(479_999);
    await flush();
    assert.equal(t.sock.ops('refresh').length, 1);
    t.timers.advance(1);
    await flush();
    assert.equal(t.sock.ops('refresh').length, 2);
    assert.equal(t.sock.last('refresh').token, 'tok-3');
    assert.equal(t.sockets.length, 1, 'never reconnected');
    assert.equal(t.client.state, 'connected');
  });
});

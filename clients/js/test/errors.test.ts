import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { GatewayError, compareIds, isServerCode, maxId } from '../src/index.js';
import { flush, setup, track } from './fake.js';

describe('errors and events', () => {
  test('an error reply rejects the request with GatewayError and the protocol code', async () => {
    const t = setup();
    void t.client.connect();
    t.sock.auth();
    const cases = [
      ['forbidden', (): Promise<unknown> => t.client.send('r9', 'x')],
      ['not_found', () => t.client.edit('r9', '1', 'x')],
      ['too_large', () => t.client.send('r9', 'x'.repeat(10))],
      ['rate_limited', () => t.client.history('r9')],
    ] as const;
    for (const [code, call] of cases) {
      const p = track<unknown>(call());
      const req = t.sock.sent[t.sock.sent.length - 1]!;
      t.sock.receive({ op: 'error', id: req.id, code, message: `m-${code}` });
      await flush();
      const e = p.error as GatewayError;
      assert.ok(e instanceof GatewayError && e instanceof Error);
      assert.equal(e.code, code);
      assert.equal(e.source, 'server');
      assert.equal(e.message, `m-${code}`);
      assert.equal(e.op, req.op);
      assert.equal(e.room, 'r9');
    }
    assert.equal(t.of('error').length, 0, 'answered errors are not events');
  });

  test('unsolicited errors are events; unknown ops pass through as unknown', () => {
    const t = setup();
    void t.client.connect();
    t.sock.auth();
    t.sock.receive({ op: 'error', code: 'bad_request', message: 'not JSON' });
    t.sock.receive({ op: 'error', id: 999, code: 'forbidden', message: 'typing' });
    t.sock.receive({ op: 'poll', room: 'r1', question: '?' });
    t.sock.receive({ op: 'joined', room: 'r1', user: 'u2' });
    t.sock.receive({ op: 'read', room: 'r1', user: 'u2', msg: '5' });
    t.sock.onmessage!({ data: 'not json' });
    t.sock.onmessage!({ data: '[1,2]' });
    const errors = t.of<GatewayError>('error');
    assert.deepEqual(errors.map((e) => [e.code, e.message]), [['bad_request', 'not JSON'], ['forbidden', 'typing']]);
    assert.deepEqual(t.of('unknown'), [{ op: 'poll', room: 'r1', question: '?' }]);
    assert.deepEqual(t.of('joined'), [{ op: 'joined', room: 'r1', user: 'u2' }]);
    assert.deepEqual(t.of('read'), [{ op: 'read', room: 'r1', user: 'u2', msg: '5' }]);
  });

  test('requests while disconnected or closed reject with client codes', async () => {
    const t = setup();
    const a = track(t.client.presence('r1'));
    t.client.close();
    const b = track(t.client.history('r1'));
    const c = track(t.client.send('r1', 'x'));
    await flush();
    assert.equal((a.error as GatewayError).code, 'disconnected');
    assert.equal((b.error as GatewayError).code, 'closed');
    assert.equal((c.error as GatewayError).code, 'closed');
    assert.equal((c.error as GatewayError).source, 'client');
    assert.equal(isServerCode('closed'), false);
    assert.equal(isServerCode('unavailable'), true);
  });

  test('replies map to typed results', async () => {
    const t = setup();
    void t.client.connect();
    t.sock.auth();
    void t.client.join('r1');
    t.sock.reply('join', { room: 'r1', recovered: true });
    await flush();
    const p = track(t.client.presence('r1'));
    t.sock.reply('presence', { room: 'r1', users: ['u1', 'u2'] }, 'presence');
    const rc = track(t.client.receipts('r1'));
    t.sock.reply('receipts', { room: 'r1', read: { u2: '9' } }, 'receipts');
    const re = track(t.client.react('r1', '9', '👍'));
    t.sock.reply('react', { room: 'r1' }); // held already: ok without msg
    const ed = track(t.client.edit('r1', '9', { t: 'x' }));
    t.sock.reply('edit', { room: 'r1', msg: '12', ts: 4 });
    const rd = track(t.client.read('r1', '9'));
    t.sock.reply('read', { room: 'r1' });
    t.timers.advance(7);
    const pg = track(t.client.ping());
    t.timers.advance(3);
    t.sock.reply('ping', {}, 'pong');
    assert.equal(t.client.typing('r1'), true);
    assert.deepEqual(t.sock.sent[t.sock.sent.length - 1], { op: 'typing', room: 'r1' });
    await flush();
    assert.deepEqual(p.value, ['u1', 'u2']);
    assert.deepEqual(rc.value, { u2: '9' });
    assert.deepEqual(re.value, { room: 'r1' });
    assert.deepEqual(ed.value, { room: 'r1', msg: '12', ts: 4 });
    assert.equal(rd.settled && rd.error, undefined);
    assert.equal(pg.value, 3);
    assert.deepEqual(t.sock.last('react'), { op: 'react', room: 'r1', msg: '9', key: '👍', id: t.sock.last('react').id });
  });
});

describe('ids', () => {
  test('compare as 64-bit integers, not as numbers or plain strings', () => {
    assert.ok(compareIds('9', '10') < 0);
    assert.ok(compareIds('10', '9') > 0);
    assert.equal(compareIds('18446744073709551615', '18446744073709551615'), 0);
    // Adjacent past 2^53: equal as Number, distinct here.
    assert.equal(Number('9007199254740993'), Number('9007199254740992'));
    assert.ok(compareIds('9007199254740993', '9007199254740992') > 0);
    assert.equal(maxId('7212345678901234567', '7212345678901234589'), '7212345678901234589');
    assert.equal(maxId(undefined, '1'), '1');
  });
});

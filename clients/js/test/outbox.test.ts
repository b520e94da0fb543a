import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { GatewayError, isNonce } from '../src/index.js';
import { flush, setup, track } from './fake.js';

/** Connects, joins `room`, answers the join. */
async function joined(room = 'r1') {
  const t = setup({ random: () => 0 });
  void t.client.connect();
  t.sock.auth();
  const j = track(t.client.join(room));
  t.sock.reply('join', { room, recovered: true });
  await flush();
  assert.deepEqual(j.value, { recovered: true });
  return t;
}

describe('outbox', () => {
  test('sends made while disconnected go out after reconnect and re-join, with their nonce, in order', async () => {
    const t = await joined();
    t.sock.serverClose(1006);
    assert.equal(t.client.state, 'disconnected');
    const a = track(t.client.send('r1', { text: 'a' }));
    const b = track(t.client.send('r1', { text: 'b' }, { replyTo: '42' }));
    assert.equal(t.client.pendingSends, 2);
    t.timers.advance(0);
    t.sock.auth();
    // Re-join first; the sends wait for its ok.
    assert.deepEqual(t.sock.sent.map((f) => f.op), ['auth', 'join']);
    t.sock.reply('join', { room: 'r1', recovered: true });
    const sends = t.sock.ops('send');
    assert.equal(sends.length, 2);
    assert.deepEqual(sends.map((f) => f.body), [{ text: 'a' }, { text: 'b' }]);
    assert.equal(sends[1]!.reply_to, '42');
    assert.ok(isNonce(sends[0]!.nonce) && isNonce(sends[1]!.nonce));
    assert.notEqual(sends[0]!.nonce, sends[1]!.nonce);
    t.sock.receive({ op: 'ok', id: sends[0]!.id, room: 'r1', msg: '100', ts: 5 });
    t.sock.receive({ op: 'ok', id: sends[1]!.id, room: 'r1', msg: '101', ts: 6 });
    await flush();
    assert.deepEqual(a.value, { room: 'r1', msg: '100', ts: 5, duplicate: false, nonce: sends[0]!.nonce });
    assert.equal((b.value as { msg: string }).msg, '101');
    assert.equal(t.client.pendingSends, 0);
  });

  test('sends queued before connect() go out once connected', async () => {
    const t = setup();
    const s = track(t.client.send('lobby', 'early'));
    void t.client.connect();
    t.sock.auth();
    assert.equal(t.sock.last('send').body, 'early');
    t.sock.reply('send', { room: 'lobby', msg: '7', ts: 1 });
    await flush();
    assert.equal((s.value as { msg: string }).msg, '7');
  });

  test('a send whose reply was lost is retried with the same nonce and resolves once (duplicate)', async () => {
    const t = await joined();
    const s = track(t.client.send('r1', 'hello'));
    const first = t.sock.last('send');
    t.sock.serverClose(1006); // reply lost
    await flush();
    assert.equal(s.settled, false, 'still pending across the drop');
    t.timers.advance(0);
    t.sock.auth();
    t.sock.reply('join', { room: 'r1', recovered: true });
    const again = t.sock.last('send');
    assert.equal(again.nonce, first.nonce);
    assert.equal(again.body, 'hello');
    assert.notEqual(again.id, first.id);
    t.sock.reply('send', { room: 'r1', msg: '555', ts: 9, duplicate: true });
    // A stray late reply to the old id changes nothing.
    t.sock.receive({ op: 'ok', id: first.id, room: 'r1', msg: '555', ts: 9 });
    await flush();
    assert.equal(s.count, 1);
    assert.deepEqual(s.value, { room: 'r1', msg: '555', ts: 9, duplicate: true, nonce: first.nonce });
    assert.equal(t.sock.ops('send').length, 1);
  });

  test('ephemeral sends are not queued: rejected with disconnected', async () => {
    const t = await joined();
    t.sock.serverClose(1006);
    const e = track(t.client.send('r1', 'typing...', { ephemeral: true }));
    await flush();
    assert.ok(e.error instanceof GatewayError);
    assert.equal((e.error as GatewayError).code, 'disconnected');
    assert.equal((e.error as GatewayError).source, 'client');
  });

  test('pending edit/react/history are rejected with disconnected when the socket drops', async () => {
    const t = await joined();
    const e = track(t.client.edit('r1', '100', 'new'));
    const r = track(t.client.react('r1', '100', '👍'));
    const h = track(t.client.history('r1'));
    assert.equal(t.sock.ops('edit').length, 1);
    t.sock.serverClose(1006);
    await flush();
    for (const p of [e, r, h]) assert.equal((p.error as GatewayError).code, 'disconnected');
    t.timers.advance(0);
    t.sock.auth();
    t.sock.reply('join', { room: 'r1', recovered: true });
    assert.equal(t.sock.ops('edit').length, 0, 'not retried');
  });

  test('requests time out with timeout', async () => {
    const t = await joined();
    const p = track(t.client.presence('r1'));
    t.timers.advance(9_999);
    await flush();
    assert.equal(p.settled, false);
    t.timers.advance(1);
    await flush();
    assert.equal((p.error as GatewayError).code, 'timeout');
    // A late reply is ignored, not surfaced as an event.
    t.sock.reply('presence', { room: 'r1', users: [] }, 'presence');
    assert.equal(t.of('unknown').length, 0);
  });

  test('a send times out from its write, not while waiting in the outbox', async () => {
    const t = await joined();
    t.sock.serverClose(1006);
    const s = track(t.client.send('r1', 'x'));
    t.timers.advance(60_000); // reconnect delay 0 runs; the socket stays unopened
    await flush();
    assert.equal(s.settled, false);
  });

  test('leave drops queued sends of that room with cancelled', async () => {
    const t = await joined();
    t.sock.serverClose(1006);
    const s = track(t.client.send('r1', 'x'));
    await t.client.leave('r1');
    await flush();
    assert.equal((s.error as GatewayError).code, 'cancelled');
    assert.deepEqual(t.client.joinedRooms, []);
  });
});

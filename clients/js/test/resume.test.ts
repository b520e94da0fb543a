import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { GatewayError, RoomView, compareIds, type HistoryMessage } from '../src/index.js';
import { flush, setup, track } from './fake.js';

// Ids past 2^53, where Number would lose precision.
const A = '7212345678901234567';
const B = '7212345678901234589';
const C = '7212345678901234590';
const D = '7212345678901234601';
const E = '7212345678901234602';

async function joined(room = 'r1') {
  const t = setup({ random: () => 0 });
  void t.client.connect();
  t.sock.auth();
  void t.client.join(room);
  t.sock.reply('join', { room, recovered: true });
  await flush();
  return t;
}

function reconnect(t: Awaited<ReturnType<typeof joined>>, code = 1006) {
  t.sock.serverClose(code);
  t.timers.advance(250);
  t.sock.auth();
}

describe('resume', () => {
  test('re-join with since = last id seen, including edit/react/delete event ids', async () => {
    const t = await joined();
    t.sock.receive({ op: 'msg', room: 'r1', msg: A, from: 'u2', ts: 1, body: 'hi' });
    t.sock.receive({ op: 'edit', room: 'r1', msg: B, target: A, from: 'u2', ts: 2, body: 'hi!' });
    t.sock.receive({ op: 'react', room: 'r1', msg: C, target: A, from: 'u3', ts: 3, key: '👍' });
    // Not room-order events: no effect on since.
    t.sock.receive({ op: 'read', room: 'r1', user: 'u3', msg: D });
    t.sock.receive({ op: 'typing', room: 'r1', user: 'u3' });
    assert.equal(t.client.lastSeen('r1'), C);
    reconnect(t);
    assert.deepEqual(t.sock.last('join'), { op: 'join', room: 'r1', since: C, id: t.sock.last('join').id });
  });

  test('replayed events arrive before the join ok; anything at or below the last seen id is dropped', async () => {
    const t = await joined();
    t.sock.receive({ op: 'msg', room: 'r1', msg: A, from: 'u2', ts: 1, body: 'a' });
    t.sock.receive({ op: 'msg', room: 'r1', msg: B, from: 'u2', ts: 2, body: 'b' });
    reconnect(t);
    const j = track(t.client.join('r1'));
    // The server replays (a buggy overlap included) then answers.
    t.sock.receive({ op: 'msg', room: 'r1', msg: A, from: 'u2', ts: 1, body: 'a' });
    t.sock.receive({ op: 'msg', room: 'r1', msg: B, from: 'u2', ts: 2, body: 'b' });
    t.sock.receive({ op: 'msg', room: 'r1', msg: C, from: 'u2', ts: 3, body: 'c' });
    t.sock.receive({ op: 'delete', room: 'r1', msg: D, target: A, from: 'u2', ts: 4 });
    t.sock.reply('join', { room: 'r1', recovered: true });
    // Live duplicates too.
    t.sock.receive({ op: 'msg', room: 'r1', msg: C, from: 'u2', ts: 3, body: 'c' });
    t.sock.receive({ op: 'msg', room: 'r1', msg: E, from: 'u2', ts: 5, body: 'e' });
    await flush();
    assert.deepEqual(t.of<{ body: string }>('msg').map((m) => m.body), ['a', 'b', 'c', 'e']);
    assert.equal(t.of('delete').length, 1);
    assert.equal(t.of('gap').length, 0);
    assert.deepEqual(j.value, { recovered: true });
  });

  test('gap when the re-join is not recovered', async () => {
    const t = await joined();
    t.sock.receive({ op: 'msg', room: 'r1', msg: A, from: 'u2', ts: 1, body: 'a' });
    reconnect(t);
    assert.equal(t.sock.last('join').since, A);
    t.sock.reply('join', { room: 'r1', recovered: false, read: A });
    assert.deepEqual(t.of('gap'), [{ room: 'r1', since: A }]);
  });

  test('gap when a room is re-joined with no id seen to resume from', async () => {
    const t = await joined();
    reconnect(t);
    assert.equal(t.sock.last('join').since, undefined);
    t.sock.reply('join', { room: 'r1', recovered: true });
    assert.deepEqual(t.of('gap'), [{ room: 'r1' }]);
  });

  test('history never moves the last seen id (only live and replayed room events do)', async () => {
    const t = await joined();
    const page = (msg: string) => ({ room: 'r1', messages: [{ op: 'msg', room: 'r1', msg, from: 'u', ts: 0, body: 1 }] });
    void t.client.history('r1');
    t.sock.reply('history', page(B), 'history');
    await flush();
    assert.equal(t.client.lastSeen('r1'), undefined, 'a page does not set it');
    t.sock.receive({ op: 'msg', room: 'r1', msg: C, from: 'u2', ts: 1, body: 'c' });
    const older = track(t.client.history('r1', { before: C, limit: 2 }));
    assert.deepEqual(t.sock.last('history'), { op: 'history', room: 'r1', before: C, limit: 2, id: t.sock.last('history').id });
    t.sock.reply('history', page(A), 'history');
    void t.client.history('r1');
    t.sock.reply('history', page(E), 'history');
    await flush();
    assert.equal((older.value as unknown[]).length, 1);
    assert.equal(t.client.lastSeen('r1'), C, 'a newer page does not raise it');
    reconnect(t);
    assert.equal(t.sock.last('join').since, C);
  });

  test('reactions folded into a history page are not counted again after a re-join', async () => {
    const t = await joined();
    const view = new RoomView('r1', { me: 'u1' });
    t.client.on('roomEvent', (e) => view.apply(e));
    // The room holds message A with a reaction by u2 (event C), folded into the page.
    const page = track(t.client.history('r1'));
    const m = { op: 'msg', room: 'r1', msg: A, from: 'u2', ts: 1, body: 'a', reactions: { '👍': { count: 1, me: false } } };
    t.sock.reply('history', { room: 'r1', messages: [m] }, 'history');
    await flush();
    view.addHistory(page.value as HistoryMessage[]);
    reconnect(t);
    // The server replays every room event after `since`: C is after A.
    const since = t.sock.last('join').since as string | undefined;
    if (since !== undefined && compareIds(since, C) < 0) {
      t.sock.receive({ op: 'react', room: 'r1', msg: C, target: A, from: 'u2', ts: 3, key: '👍' });
    }
    t.sock.reply('join', { room: 'r1', recovered: true });
    await flush();
    assert.equal(view.get(A)!.reactions!['👍']!.count, 1);
    assert.deepEqual(t.of('gap'), [{ room: 'r1' }], 'nothing to resume from: page history again');
  });

  test('join of a joined room while disconnected waits for the re-join and gives its result', async () => {
    const t = setup({ random: () => 0 });
    void t.client.connect();
    t.sock.auth();
    const first = track(t.client.join('r1'));
    t.sock.reply('join', { room: 'r1', recovered: true, read: A });
    await flush();
    assert.deepEqual(first.value, { recovered: true, read: A });
    t.sock.receive({ op: 'msg', room: 'r1', msg: B, from: 'u2', ts: 1, body: 'b' });
    t.sock.serverClose(1006);
    const again = track(t.client.join('r1'));
    await flush();
    assert.equal(again.settled, false, 'not joined on any connection now');
    t.timers.advance(0);
    t.sock.auth();
    const again2 = track(t.client.join('r1'));
    await flush();
    assert.equal(again.settled || again2.settled, false, 'the re-join is not answered yet');
    assert.equal(t.sock.ops('join').length, 1, 'one re-join');
    t.sock.reply('join', { room: 'r1', recovered: false, read: B });
    await flush();
    assert.deepEqual(again.value, { recovered: false, read: B });
    assert.deepEqual(again2.value, { recovered: false, read: B });
    const ready = track(t.client.join('r1'));
    await flush();
    assert.deepEqual(ready.value, { recovered: false, read: B }, 'joined on this connection: at once');
    assert.equal(t.sock.ops('join').length, 1);
  });

  test('join while disconnected resolves once joined; explicit since is sent', async () => {
    const t = setup();
    const j = track(t.client.join('r2', { since: A }));
    void t.client.connect();
    t.sock.auth();
    assert.equal(t.sock.last('join').since, A);
    t.sock.reply('join', { room: 'r2', recovered: true, read: A });
    await flush();
    assert.deepEqual(j.value, { recovered: true, read: A });
  });

  test('a refused re-join drops the room: joinFailed, waiting requests rejected', async () => {
    const t = await joined();
    reconnect(t);
    const s = track(t.client.send('r1', 'x'));
    t.sock.reply('join', { code: 'forbidden', message: 'banned' }, 'error');
    await flush();
    const f = t.of<{ room: string; error: GatewayError }>('joinFailed');
    assert.equal(f.length, 1);
    assert.equal(f[0]!.error.code, 'forbidden');
    assert.equal((s.error as GatewayError).code, 'forbidden');
    assert.deepEqual(t.client.joinedRooms, []);
  });

  test('removed: the room is not re-joined', async () => {
    const t = await joined();
    t.sock.receive({ op: 'removed', room: 'r1', reason: 'kicked' });
    assert.deepEqual(t.of('removed'), [{ op: 'removed', room: 'r1', reason: 'kicked' }]);
    reconnect(t);
    assert.equal(t.sock.ops('join').length, 0);
  });

  test('several rooms are all re-joined, each with its own since', async () => {
    const t = await joined('a');
    void t.client.join('b');
    t.sock.reply('join', { room: 'b', recovered: true });
    t.sock.receive({ op: 'msg', room: 'a', msg: A, from: 'x', ts: 1, body: 1 });
    t.sock.receive({ op: 'msg', room: 'b', msg: B, from: 'x', ts: 1, body: 1 });
    reconnect(t, 1001);
    const joins = t.sock.ops('join').map((f) => [f.room, f.since]);
    assert.deepEqual(joins, [['a', A], ['b', B]]);
  });
});

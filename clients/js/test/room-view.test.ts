import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { RoomView, type HistoryMessage, type RoomEvent } from '../src/index.js';

const R = 'r1';

function msg(id: string, from: string, body: unknown, extra: object = {}): RoomEvent {
  return { op: 'msg', room: R, msg: id, from, ts: Number(id), body, ...extra } as RoomEvent;
}
function change(op: 'edit' | 'delete' | 'react' | 'unreact', id: string, target: string, from: string, extra: object = {}): RoomEvent {
  return { op, room: R, msg: id, target, from, ts: Number(id), ...extra } as RoomEvent;
}

describe('RoomView', () => {
  test('a sequence of events folds to exactly what history returns', () => {
    const v = new RoomView(R, { me: 'me' });
    const events: RoomEvent[] = [
      msg('10', 'u2', { t: 'first' }),
      msg('11', 'me', { t: 'second' }, { reply_to: '10' }),
      msg('12', 'u2', { t: 'third' }),
      change('edit', '13', '10', 'u2', { body: { t: 'first, edited' } }),
      change('react', '14', '10', 'me', { key: '👍' }),
      change('react', '15', '10', 'u3', { key: '👍' }),
      change('react', '16', '10', 'u3', { key: 'x"' }),
      change('edit', '17', '10', 'u2', { body: { t: 'first, edited twice' } }),
      change('react', '18', '12', 'u2', { key: '🎉' }),
      change('delete', '19', '12', 'u2'),
      change('react', '20', '11', 'u3', { key: '❤' }),
      change('unreact', '21', '11', 'u3', { key: '❤' }),
      change('react', '22', '11', 'me', { key: 'ok' }),
      change('react', '23', '11', 'u4', { key: 'ok' }),
      change('unreact', '24', '11', 'me', { key: 'ok' }),
      // Targets not loaded: ignored.
      change('edit', '25', '5', 'u2', { body: 'nope' }),
      // Another room: ignored.
      { op: 'msg', room: 'other', msg: '26', from: 'u2', ts: 26, body: 'x' },
    ];
    const changed = events.map((e) => v.apply(e));
    assert.deepEqual(changed, [true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, false, false]);
    // What the server's history returns for the same room (protocol/src/encode.rs shapes).
    const history: HistoryMessage[] = [
      { op: 'msg', room: R, msg: '10', from: 'u2', ts: 10, body: { t: 'first, edited twice' }, edited: 17,
        reactions: { '👍': { count: 2, me: true }, 'x"': { count: 1, me: false } } },
      { op: 'msg', room: R, msg: '11', from: 'me', ts: 11, reply_to: '10', body: { t: 'second' },
        reactions: { ok: { count: 1, me: false } } },
      { op: 'msg', room: R, msg: '12', from: 'u2', ts: 12, deleted: true },
    ];
    assert.deepEqual(v.messages(), history);
    // And a view fed that history page alone holds the same objects.
    const fromHistory = new RoomView(R, { me: 'me' });
    fromHistory.addHistory(history);
    assert.deepEqual(fromHistory.messages(), v.messages());
  });

  test('merging history pages with live events: id order, no duplicates, history state wins', () => {
    const v = new RoomView(R, { me: 'me' });
    v.apply(msg('100', 'u2', 'live-100'));
    v.apply(msg('101', 'u2', 'live-101'));
    // An older page, out of order, overlapping the live ones.
    v.addHistory([
      { op: 'msg', room: R, msg: '98', from: 'u2', ts: 98, body: 'h-98' },
      { op: 'msg', room: R, msg: '99', from: 'u2', ts: 99, body: 'h-99' },
      { op: 'msg', room: R, msg: '100', from: 'u2', ts: 100, body: 'live-100 edited', edited: 150 },
    ]);
    v.addHistory([{ op: 'msg', room: R, msg: '9', from: 'u2', ts: 9, body: 'h-9' }]);
    assert.deepEqual(v.messages().map((m) => m.msg), ['9', '98', '99', '100', '101']);
    assert.equal(v.get('100')!.body, 'live-100 edited');
    assert.equal(v.get('100')!.edited, 150);
    // A replayed msg already held is not applied twice.
    assert.equal(v.apply(msg('101', 'u2', 'live-101')), false);
    assert.equal(v.size, 5);
    assert.equal(v.oldest, '9');
    assert.equal(v.newest, '101');
    // Ids past 2^53 sort as integers.
    v.apply(msg('10000000000000000001', 'u2', 'big-1'));
    v.apply(msg('9999999999999999999', 'u2', 'big-0'));
    assert.deepEqual(v.messages().slice(-2).map((m) => m.body), ['big-0', 'big-1']);
  });

  test('reaction counts: increment, decrement to 0 drops the key, me follows the current user', () => {
    const v = new RoomView(R, { me: 'me' });
    v.apply(msg('1', 'u2', 'x'));
    v.apply(change('react', '2', '1', 'u3', { key: 'k' }));
    assert.deepEqual(v.get('1')!.reactions, { k: { count: 1, me: false } });
    v.apply(change('react', '3', '1', 'me', { key: 'k' }));
    assert.deepEqual(v.get('1')!.reactions, { k: { count: 2, me: true } });
    // My own react seen twice (replay of a state already folded): no double count.
    assert.equal(v.apply(change('react', '4', '1', 'me', { key: 'k' })), false);
    v.apply(change('unreact', '5', '1', 'me', { key: 'k' }));
    assert.deepEqual(v.get('1')!.reactions, { k: { count: 1, me: false } });
    v.apply(change('unreact', '6', '1', 'u3', { key: 'k' }));
    assert.equal(v.get('1')!.reactions, undefined);
    assert.ok(!('reactions' in v.get('1')!));
    // Unreact of a key nobody holds: nothing.
    assert.equal(v.apply(change('unreact', '7', '1', 'u3', { key: 'k' })), false);
    // Deleted messages take no more changes.
    v.apply(change('delete', '8', '1', 'u2'));
    assert.equal(v.apply(change('edit', '9', '1', 'u2', { body: 'y' })), false);
    assert.equal(v.apply(change('react', '10', '1', 'u2', { key: 'k' })), false);
    assert.deepEqual(v.get('1'), { op: 'msg', room: R, msg: '1', from: 'u2', ts: 1, deleted: true });
  });

  test('changed messages are new objects; unchanged ones keep their identity', () => {
    const v = new RoomView(R);
    v.apply(msg('1', 'u2', 'a'));
    v.apply(msg('2', 'u2', 'b'));
    const [a1, b1] = v.messages();
    v.apply(change('edit', '3', '1', 'u2', { body: 'A' }));
    const [a2, b2] = v.messages();
    assert.notEqual(a1, a2);
    assert.equal(b1, b2);
    assert.equal(a1!.body, 'a', 'the old object is not mutated');
  });

  test('a join replay (message in its current state, then later events) folds correctly', () => {
    // entries_after replays messages edited/deleted as they are now, without reactions.
    const v = new RoomView(R, { me: 'me' });
    v.apply(msg('1', 'u2', 'v3', { edited: 30 }));
    v.apply(change('edit', '2', '1', 'u2', { body: 'v2' }));
    v.apply(change('react', '4', '1', 'me', { key: 'k' }));
    v.apply(change('edit', '30', '1', 'u2', { body: 'v3' }));
    assert.deepEqual(v.get('1'), {
      op: 'msg', room: R, msg: '1', from: 'u2', ts: 1, body: 'v3', edited: 30, reactions: { k: { count: 1, me: true } },
    });
  });
});

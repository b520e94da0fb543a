// Live check against a real gateway binary (not part of `npm test`).
//
//   GATEWAY_BIN=path/to/gateway npm run live-check
//
// Starts nodes on 127.0.0.1 only, with throwaway data dirs, and kills every
// process it started. Phase 1 (guests): auth, join, send, history, edit,
// react, RoomView == history; node killed, restarted on the same port and
// data dir: the client reconnects, re-joins with since, gets the message it
// missed once, and its outbox send lands once; SIGTERM gives 1001 and a fast
// reconnect. Phase 2 (JWT): a send whose reply is lost is retried with the
// same nonce and answered duplicate:true; refresh before expires_in.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { ChatClient, RoomView } from '../dist/index.js';

const here = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.GATEWAY_BIN ?? resolve(here, '../../../target/release/gateway');
const procs = new Set();
const dirs = [];
process.on('exit', () => {
  for (const p of procs) p.kill('SIGKILL');
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const log = (...a) => console.log(`[${(performance.now() / 1000).toFixed(2)}s]`, ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitFor(what, cond, ms = 10_000) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

function startNode({ port = 0, dataDir, args = [] }) {
  return new Promise((resolveStart, reject) => {
    const proc = spawn(BIN, ['--listen', `127.0.0.1:${port}`, '--data-dir', dataDir, '--log-format', 'json', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    procs.add(proc);
    proc.on('exit', () => procs.delete(proc));
    const timer = setTimeout(() => reject(new Error('node did not start')), 20_000);
    let buf = '';
    const onData = (d) => {
      buf += d;
      const m = /listening[^\n]*?(127\.0\.0\.1:\d+)/.exec(buf);
      if (m) {
        clearTimeout(timer);
        resolveStart({ proc, addr: m[1], port: Number(m[1].split(':')[1]) });
      }
    };
    proc.stdout.on('data', onData);
    proc.stderr.on('data', onData);
    proc.on('error', reject);
  });
}

function stopNode(node, signal) {
  return new Promise((r) => {
    if (node.proc.exitCode !== null) return r();
    node.proc.once('exit', () => r());
    node.proc.kill(signal);
  });
}

// A WebSocket for the client under test: the real `ws`, wrapped so the
// check can refuse connects (`gate`), see every frame sent, and lose the
// reply to one send (then cut the connection, as a network failure would).
const sent = [];
const sockets = [];
class TestWS {
  static gate = true;
  static loseNextSendReply = false;
  static lostId = undefined;
  constructor(url) {
    if (!TestWS.gate) throw new Error('connects refused by the check');
    this.inner = new WebSocket(url);
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    sockets.push(this);
    this.inner.onopen = (e) => this.onopen?.(e);
    this.inner.onclose = (e) => this.onclose?.(e);
    this.inner.onerror = (e) => this.onerror?.(e);
    this.inner.onmessage = (e) => {
      const f = JSON.parse(e.data);
      if (TestWS.lostId !== undefined && f.id === TestWS.lostId) {
        TestWS.lostId = undefined;
        log('  (reply lost on purpose:', e.data, ')');
        this.inner.terminate();
        return;
      }
      this.onmessage?.(e);
    };
  }
  get readyState() {
    return this.inner.readyState;
  }
  send(data) {
    const f = JSON.parse(data);
    sent.push(f);
    if (f.op === 'send' && TestWS.loseNextSendReply) {
      TestWS.loseNextSendReply = false;
      TestWS.lostId = f.id;
    }
    this.inner.send(data);
  }
  close(code, reason) {
    this.inner.close(code, reason);
  }
}

function record(client) {
  const ev = [];
  for (const n of ['msg', 'edit', 'react', 'connected', 'disconnected', 'gap', 'error', 'joinFailed', 'authFailed', 'closed']) {
    client.on(n, (p) => ev.push([n, p]));
  }
  return { ev, of: (n) => ev.filter(([x]) => x === n).map(([, p]) => p) };
}

const bodyText = (m) => m.body?.text;

// ------------------------------------------------------------------ phase 1
async function guests() {
  log('phase 1: guests');
  const dataDir = mkdtempSync(join(tmpdir(), 'gw-live-'));
  dirs.push(dataDir);
  let node = await startNode({ dataDir });
  const url = `ws://${node.addr}/ws`;
  log('node 1 on', url);

  const a = new ChatClient({ urls: url, WebSocket: TestWS, backoff: { initialMs: 200, maxMs: 1000 } });
  const A = record(a);
  const who = await a.connect();
  assert.match(who.user, /^guest-/);
  log('A connected as', who.user, 'on', who.node);
  const view = new RoomView('live', { me: who.user });
  a.on('roomEvent', (e) => view.apply(e));

  assert.deepEqual(await a.join('live'), { recovered: true });
  const s1 = await a.send('live', { text: 'hello' });
  assert.match(s1.msg, /^\d+$/);
  assert.equal(s1.duplicate, false);
  await waitFor('own msg event', () => view.get(s1.msg));
  const h1 = await a.history('live');
  assert.deepEqual(h1.map(bodyText), ['hello']);
  const e1 = await a.edit('live', s1.msg, { text: 'hello, edited' });
  const r1 = await a.react('live', s1.msg, '👍');
  const r2 = await a.react('live', s1.msg, '👍');
  assert.ok(e1.msg && r1.msg, 'edit and react get event ids');
  assert.equal(r2.msg, undefined, 'a reaction held already: ok without msg');
  await waitFor('react event', () => a.lastSeen('live') === r1.msg);
  const h2 = await a.history('live');
  assert.deepEqual(view.messages(), h2, 'RoomView folded from live events == history');
  log('history after edit+react:', JSON.stringify(h2));
  assert.deepEqual(await a.presence('live'), [who.user]);
  await a.read('live', s1.msg);
  assert.deepEqual(await a.receipts('live'), { [who.user]: s1.msg });
  log('ping rtt', await a.ping(), 'ms');

  // Kill the node; the client cannot reconnect until the check opens the gate.
  const since = a.lastSeen('live');
  TestWS.gate = false;
  await stopNode(node, 'SIGKILL');
  await waitFor('A notices', () => a.state !== 'connected');
  log('node 1 killed; A is', a.state, A.of('disconnected').at(-1));
  const queued = a.send('live', { text: 'sent while down' });
  assert.equal(a.pendingSends, 1);

  node = await startNode({ port: node.port, dataDir });
  log('node 2 on the same port and data dir');
  const b = new ChatClient({ urls: url, WebSocket, pingIntervalMs: 0 });
  const B = record(b);
  await b.connect();
  await b.join('live');
  const missed = await b.send('live', { text: 'missed by A' });
  log('B sent', missed.msg, 'while A was away');

  const joinsBefore = sent.filter((f) => f.op === 'join').length;
  TestWS.gate = true;
  const q = await queued;
  log('outbox send acknowledged', q);
  const rejoin = sent.filter((f) => f.op === 'join').slice(joinsBefore);
  assert.equal(rejoin.length, 1);
  assert.equal(rejoin[0].since, since, 're-join with since = last seen id (the react event)');
  const aTexts = A.of('msg').map(bodyText);
  assert.deepEqual(aTexts.filter((t) => t === 'missed by A').length, 1, 'missed message replayed once');
  await waitFor('own queued msg', () => A.of('msg').some((m) => m.msg === q.msg));
  await waitFor('B gets the queued msg', () => B.of('msg').some((m) => m.msg === q.msg));
  const h3 = await a.history('live');
  assert.deepEqual(h3.map(bodyText), ['hello, edited', 'missed by A', 'sent while down']);
  assert.equal(A.of('msg').filter((m) => bodyText(m) === 'sent while down').length, 1);
  assert.equal(B.of('msg').filter((m) => bodyText(m) === 'sent while down').length, 1);
  assert.deepEqual(view.messages().map((m) => m.msg), h3.map((m) => m.msg), 'RoomView has every message once');
  assert.equal(A.of('gap').length, 0);
  log('A re-joined with since', since, '; A saw', JSON.stringify(aTexts));

  // Draining: close 1001, reconnect at once (small jitter; that attempt
  // then fails against the exiting node, with 1006 and the backoff).
  const seen = A.of('disconnected').length;
  await stopNode(node, 'SIGTERM');
  await waitFor('1001', () => A.of('disconnected').length > seen);
  const d = A.of('disconnected')[seen];
  log('SIGTERM:', d);
  assert.equal(d.code, 1001);
  assert.ok(d.delayMs < 250);
  a.close();
  b.close();
  assert.equal(a.state, 'closed');
}

// ------------------------------------------------------------------ phase 2
const SECRET = 'live-check-secret-0123456789abcdef';
function mint(sub, ttlS) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, iat: now, exp: now + ttlS })}`;
  return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`;
}

async function jwt() {
  log('phase 2: JWT');
  const dataDir = mkdtempSync(join(tmpdir(), 'gw-live-'));
  dirs.push(dataDir);
  const node = await startNode({ dataDir, args: ['--jwt-secret', SECRET] });
  const url = `ws://${node.addr}/ws`;
  let minted = 0;
  const c = new ChatClient({
    urls: url,
    WebSocket: TestWS,
    getToken: async () => (minted++, mint('alice', 20)),
    backoff: { initialMs: 200, maxMs: 1000 },
  });
  const C = record(c);
  await c.connect();
  assert.equal(c.user, 'alice');
  log('connected', C.of('connected').at(-1));
  await c.join('jwt-room');
  // A first message, so that the re-join below has a since to resume from.
  const first = await c.send('jwt-room', { text: 'first' });
  await waitFor('first msg', () => c.lastSeen('jwt-room') === first.msg);

  // A send whose reply is lost: same nonce again after reconnect, once in history.
  const socketsBefore = sockets.length;
  TestWS.loseNextSendReply = true;
  const r = await c.send('jwt-room', { text: 'exactly once' });
  const frames = sent.filter((f) => f.op === 'send' && f.body?.text === 'exactly once');
  log('send frames:', frames.map((f) => `id=${f.id} nonce=${f.nonce}`).join(', '), '->', r);
  assert.equal(frames.length, 2);
  assert.equal(frames[0].nonce, frames[1].nonce);
  assert.equal(r.duplicate, true);
  assert.equal(sockets.length, socketsBefore + 1, 'one reconnect');
  const h = await c.history('jwt-room');
  assert.equal(h.filter((m) => bodyText(m) === 'exactly once').length, 1);
  // Its msg event arrived once: live before the cut, or replayed by the re-join.
  await waitFor('msg event', () => C.of('msg').some((m) => bodyText(m) === 'exactly once'));
  assert.equal(C.of('msg').filter((m) => bodyText(m) === 'exactly once').length, 1);
  assert.equal(C.of('gap').length, 0);

  // Refresh before expiry (expires_in ~20 s: at min(16, 10) = 10 s), same socket.
  const socketsNow = sockets.length;
  await waitFor('refresh', () => sent.some((f) => f.op === 'refresh'), 15_000);
  await sleep(300);
  assert.equal(sockets.length, socketsNow, 'no reconnect for refresh');
  assert.equal(c.state, 'connected');
  assert.equal(C.of('authFailed').length, 0);
  log('refresh sent on the same socket; getToken called', minted, 'times');
  c.close();
  await stopNode(node, 'SIGKILL');
}

try {
  await guests();
  await jwt();
  log('LIVE CHECK PASSED');
  process.exit(0);
} catch (e) {
  console.error('LIVE CHECK FAILED:', e);
  process.exit(1);
}

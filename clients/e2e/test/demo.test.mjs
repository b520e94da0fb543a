// The demo page in a real browser (Debian's Chromium), on a real two-node
// cluster: Redis from scripts/services.sh, two gateway nodes with JWT auth.
//
// Alice and Bob (separate browser contexts) load the page from node 1's `/`
// with both nodes' WebSocket URLs, chat both ways, react, edit and delete.
// Node 1 is then killed with SIGKILL. While node 2 is paused (SIGSTOP, so the
// pages cannot reconnect yet), each page sends messages: they wait in the
// client's outbox. Node 2 is resumed: both pages reconnect to it by the
// client's URL rotation, re-join with `since`, flush their outboxes, and
// chat on. At the end each page's rendered list must equal, in order, the
// room's history read from node 2's HTTP API, with every message sent by
// either page exactly once.
//
// Everything listens on 127.0.0.1, port 0; every wait polls with a deadline.
//
//   GATEWAY_BIN=<gateway binary> npm test
//   (default ${CARGO_TARGET_DIR:-/root/.cache/chat-gateway/target}/debug/gateway)
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { copyFileSync, createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '../../..');
const outDir = resolve(here, '../output');
const BIN =
  process.env.GATEWAY_BIN ?? join(process.env.CARGO_TARGET_DIR || '/root/.cache/chat-gateway/target', 'debug/gateway');
const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const SECRET = randomBytes(32).toString('hex');
const API_KEY = randomBytes(24).toString('hex');
const ROOM = `e2e-${randomBytes(4).toString('hex')}`;

const t0 = Date.now();
const log = (...a) => console.log(`[e2e ${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` every 50 ms until it returns a truthy value; fails after `ms`. */
async function waitFor(what, cond, ms = 15_000) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await cond();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(50);
  }
}

// ------------------------------------------------------------------ cleanup

const cleanups = [];
const children = new Set();
process.on('exit', () => {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      /* gone */
    }
  }
});
async function cleanup() {
  for (const f of cleanups.splice(0).reverse()) {
    try {
      await f();
    } catch (e) {
      console.error('cleanup:', e.message);
    }
  }
}
after(cleanup);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    const stop = setTimeout(() => process.exit(1), 20_000);
    cleanup().finally(() => {
      clearTimeout(stop);
      process.exit(1);
    });
  });
}

function run(cmd, args, env, ms) {
  return new Promise((res, rej) =>
    execFile(cmd, args, { env, timeout: ms, cwd: repo }, (err, stdout, stderr) =>
      err ? rej(new Error(`${cmd} ${args.join(' ')}: ${err.message}\n${stderr}`)) : res(stdout),
    ),
  );
}

// ------------------------------------------------------------------ services

async function startRedis() {
  const dir = mkdtempSync(join(tmpdir(), 'e2e-services-'));
  const env = { ...process.env, SERVICES_DIR: dir };
  cleanups.push(async () => {
    await run('bash', ['scripts/services.sh', 'down'], env, 30_000);
    rmSync(dir, { recursive: true, force: true });
  });
  const out = await run('bash', ['scripts/services.sh', 'up', 'redis'], env, 60_000);
  const m = /^GATEWAY_REDIS_URL=(redis:\/\/127\.0\.0\.1:\d+)$/m.exec(out);
  assert.ok(m, `services.sh printed no GATEWAY_REDIS_URL: ${out}`);
  return m[1];
}

/** Starts a gateway node on 127.0.0.1:0; resolves once /readyz answers 200. */
async function startNode(name, redisUrl) {
  const dataDir = mkdtempSync(join(tmpdir(), `e2e-${name}-`));
  cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('GATEWAY_')));
  Object.assign(env, {
    GATEWAY_REDIS_URL: redisUrl,
    GATEWAY_JWT_SECRET: SECRET,
    GATEWAY_API_KEY: API_KEY,
    GATEWAY_LOG_FORMAT: 'json',
  });
  const proc = spawn(BIN, ['--listen', '127.0.0.1:0', '--data-dir', dataDir], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(proc);
  const exited = new Promise((r) => proc.once('exit', (code, signal) => r({ code, signal })));
  proc.once('exit', () => children.delete(proc));
  cleanups.push(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL');
      await Promise.race([exited, sleep(5000)]);
    }
  });
  const logFile = createWriteStream(join(outDir, `${name}.log`));
  const node = { name, proc, exited, addr: '', id: '' };
  let buf = '';
  const onData = (d) => {
    logFile.write(d);
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        const f = JSON.parse(line).fields ?? {};
        if (f.message === 'gateway node serving') {
          node.addr = f.addr;
          node.id = f.node;
        }
      } catch {
        /* not JSON */
      }
    }
  };
  proc.stdout.on('data', onData);
  proc.stderr.on('data', onData);
  proc.once('error', (e) => log(`${name}: ${e.message}`));
  await waitFor(`${name} to log its address`, () => {
    if (proc.exitCode !== null) throw new Error(`${name} exited with ${proc.exitCode}; see output/${name}.log`);
    return node.addr;
  }, 20_000);
  await waitFor(`${name} /readyz`, async () => (await fetch(`http://${node.addr}/readyz`)).status === 200, 20_000);
  log(`${name}: ${node.id} at ${node.addr}`);
  return node;
}

// ------------------------------------------------------------------ JWT

const b64url = (x) => Buffer.from(x).toString('base64url');
function jwt(sub, name) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const claims = b64url(JSON.stringify({ sub, name, iat: now, exp: now + 3600 }));
  const sig = createHmac('sha256', SECRET).update(`${head}.${claims}`).digest('base64url');
  return `${head}.${claims}.${sig}`;
}

// ------------------------------------------------------------------ page helpers

const LIST = '[data-testid="message-list"] [data-testid="message"]';

/** The rendered messages of a page, in order. */
function rendered(page) {
  return page.$$eval(LIST, (els) =>
    els.map((e) => ({
      id: e.dataset.msgId,
      from: e.dataset.from,
      text: e.querySelector('[data-testid="message-text"]')?.textContent ?? null,
      edited: e.dataset.edited === 'true',
      deleted: e.dataset.deleted === 'true',
      reactions: Object.fromEntries(
        [...e.querySelectorAll('[data-testid="reaction"]')].map((r) => [r.dataset.key, Number(r.dataset.count)]),
      ),
    })),
  );
}

const pendingCount = (page) => page.locator('[data-testid="pending-message"]').count();
const status = (page) =>
  page.$eval('[data-testid="status"]', (e) => ({ state: e.dataset.state, node: e.dataset.node }));

async function send(page, text) {
  const input = page.getByTestId('composer-input');
  await input.fill(text);
  await input.press('Enter');
}

/** The id of the rendered message whose text is `text` (waits for it). */
function idOf(page, text, what = `"${text}"`) {
  return waitFor(`${what} on the page`, () =>
    page.$$eval(
      LIST,
      (els, t) => els.find((e) => e.querySelector('[data-testid="message-text"]')?.textContent === t)?.dataset.msgId,
      text,
    ),
  );
}

function message(page, id) {
  return page.locator(`[data-testid="message"][data-msg-id="${id}"]`);
}

/** The room's history from a node's HTTP API, as the pages render it. */
async function history(node) {
  const res = await fetch(`http://${node.addr}/api/rooms/${ROOM}/messages?limit=500`, {
    headers: { authorization: `Bearer ${API_KEY}` },
  });
  assert.equal(res.status, 200, `history from ${node.name}: HTTP ${res.status}`);
  const { messages } = await res.json();
  return messages.map((m) => ({
    id: m.msg,
    from: m.from,
    text: m.deleted ? null : (m.body?.text ?? null),
    edited: m.edited !== undefined,
    deleted: m.deleted === true,
    reactions: Object.fromEntries(Object.entries(m.reactions ?? {}).map(([k, v]) => [k, v.count])),
  }));
}

// ------------------------------------------------------------------ the test

test('demo page: two users chat across a node kill; nothing lost, nothing doubled', { timeout: 150_000 }, async () => {
  mkdirSync(outDir, { recursive: true });
  assert.ok(existsSync(BIN), `no gateway binary at ${BIN} (set GATEWAY_BIN)`);
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (apt-get install -y chromium)`);

  const redisUrl = await startRedis();
  log(`redis ${redisUrl}`);
  const [n1, n2] = await Promise.all([startNode('node1', redisUrl), startNode('node2', redisUrl)]);
  assert.notEqual(n1.id, n2.id);

  // The page must come from the gateway itself.
  const index = await fetch(`http://${n1.addr}/`);
  const html = await index.text();
  assert.ok(
    index.status === 200 && html.includes('/demo/app.js'),
    `node 1 does not serve the demo page at / (HTTP ${index.status}); a gateway built with static serving is needed`,
  );
  const built = readFileSync(join(repo, 'gateway/assets/demo/app.js'));
  const served = Buffer.from(await (await fetch(`http://${n1.addr}/demo/app.js`)).arrayBuffer());
  if (!served.equals(built)) log('warning: the gateway serves another app.js than gateway/assets/demo (rebuild the gateway)');

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    timeout: 30_000,
  });
  cleanups.push(() => browser.close());

  const gateways = [n1, n2].map((n) => `ws://${n.addr}/ws`).join(',');
  const errors = [];
  async function open(user, name) {
    const ctx = await browser.newContext({ viewport: { width: 1100, height: 720 }, colorScheme: 'light' });
    const page = await ctx.newPage();
    page.setDefaultTimeout(15_000);
    page.on('pageerror', (e) => errors.push(`${user}: ${e.message}`));
    const q = new URLSearchParams({ gateways, token: jwt(user, name), room: ROOM });
    await page.goto(`http://${n1.addr}/?${q}`);
    await waitFor(`${user} connected to ${n1.id}`, async () => {
      const s = await status(page);
      return s.state === 'connected' && s.node === n1.id;
    });
    return page;
  }
  const alice = await open('alice', 'Alice');
  const bob = await open('bob', 'Bob');
  log('both pages connected to node 1');

  // Both see each other in the room.
  for (const page of [alice, bob]) {
    await waitFor('presence of both', async () =>
      (await page.getByTestId('presence-user').evaluateAll((els) => els.map((e) => e.dataset.user).sort())).join() ===
      'alice,bob',
    );
  }

  const sent = [];
  const sentBy = { alice: [], bob: [] };
  const say = async (page, text) => {
    sent.push(text);
    sentBy[page === alice ? 'alice' : 'bob'].push(text);
    await send(page, text);
  };

  // ---- chat both ways, react, edit, delete
  await say(alice, 'Morning Bob! Is the cluster demo ready?');
  const a1 = await idOf(bob, 'Morning Bob! Is the cluster demo ready?');
  await say(bob, 'Almost: two nodes up, both on the same Redis.');
  const b1 = await idOf(alice, 'Almost: two nodes up, both on the same Redis.');

  await message(alice, b1).hover();
  await message(alice, b1).locator('[data-testid="action-react"][data-key="👍"]').click();
  await bob.locator(`[data-testid="message"][data-msg-id="${b1}"] [data-testid="reaction"][data-key="👍"][data-count="1"]`).waitFor();
  await alice.locator(`[data-testid="message"][data-msg-id="${b1}"] [data-testid="reaction"][data-mine="true"]`).waitFor();
  log('bob sees alice\'s reaction');

  const edited = 'Ready: two nodes up, both on the same Redis.';
  await message(bob, b1).hover();
  await message(bob, b1).getByTestId('action-edit').click();
  // The edit box takes the focus, so typing goes to it at once.
  await bob.waitForFunction(() => document.activeElement?.getAttribute('data-testid') === 'edit-input', null, {
    timeout: 5000,
  });
  await bob.getByTestId('edit-input').fill(edited);
  await bob.getByTestId('edit-input').press('Enter');
  sent[sent.indexOf('Almost: two nodes up, both on the same Redis.')] = edited;
  sentBy.bob[sentBy.bob.indexOf('Almost: two nodes up, both on the same Redis.')] = edited;
  await alice.locator(`[data-testid="message"][data-msg-id="${b1}"][data-edited="true"]`).waitFor();
  assert.equal(await message(alice, b1).getByTestId('message-text').textContent(), edited);
  log('alice sees bob\'s edit');

  await send(alice, 'oops, wrong room');
  const oops = await idOf(bob, 'oops, wrong room');
  await message(alice, oops).hover();
  await message(alice, oops).getByTestId('action-delete').click();
  await message(alice, oops).getByTestId('action-delete').click(); // "Delete?": confirm
  await bob.locator(`[data-testid="message"][data-msg-id="${oops}"][data-deleted="true"]`).waitFor();
  log('bob sees alice\'s deletion');

  await say(alice, 'Great. Let us pull the plug on node 1 and see.');
  await idOf(bob, 'Great. Let us pull the plug on node 1 and see.');

  // ---- node 1 dies; node 2 is paused so the pages stay offline for a moment
  n2.proc.kill('SIGSTOP');
  cleanups.push(() => n2.proc.exitCode === null && n2.proc.kill('SIGCONT'));
  n1.proc.kill('SIGKILL');
  await n1.exited;
  log('node 1 killed (SIGKILL), node 2 paused');
  for (const page of [alice, bob]) {
    await waitFor('the page to notice the lost connection', async () => (await status(page)).state !== 'connected');
  }
  const offline = [
    [alice, 'Node 1 is gone. This one waits in my outbox.'],
    [bob, 'Same here, my page says it is reconnecting.'],
    [alice, 'Second message while offline, in order.'],
    [bob, 'And my second one, queued too.'],
  ];
  for (const [page, text] of offline) await say(page, text);
  for (const page of [alice, bob]) {
    await waitFor('2 queued messages shown as pending', async () => (await pendingCount(page)) === 2);
    assert.notEqual((await status(page)).state, 'connected', 'the page reconnected before node 2 was resumed');
  }
  log('4 messages sent while offline, all pending');
  n2.proc.kill('SIGCONT');
  log('node 2 resumed');

  for (const page of [alice, bob]) {
    await waitFor(
      `the page connected to ${n2.id}`,
      async () => {
        const s = await status(page);
        return s.state === 'connected' && s.node === n2.id;
      },
      30_000,
    );
  }
  log('both pages reconnected to node 2');

  await say(bob, 'Back online through node 2, nothing lost.');
  await say(alice, 'Confirmed, I see everything once.');
  await idOf(alice, 'Back online through node 2, nothing lost.');
  await idOf(bob, 'Confirmed, I see everything once.');

  // ---- the pages converge to node 2's history: same messages, same order, once each
  let hist = [];
  const lists = {};
  const converged = async () => {
    hist = await history(n2);
    lists.alice = await rendered(alice);
    lists.bob = await rendered(bob);
    const pend = (await pendingCount(alice)) + (await pendingCount(bob));
    const want = JSON.stringify(hist);
    return pend === 0 && JSON.stringify(lists.alice) === want && JSON.stringify(lists.bob) === want;
  };
  try {
    await waitFor('both pages to equal the history from node 2', converged, 20_000);
  } catch (e) {
    log('history:', JSON.stringify(hist, null, 1));
    log('alice:', JSON.stringify(lists.alice, null, 1));
    log('bob:', JSON.stringify(lists.bob, null, 1));
    throw e;
  }
  for (const who of ['alice', 'bob']) {
    assert.deepEqual(lists[who], hist, `${who}'s page differs from node 2's history`);
  }
  const ids = hist.map((m) => m.id);
  assert.equal(new Set(ids).size, ids.length, 'duplicate ids');
  const texts = hist.filter((m) => !m.deleted).map((m) => m.text);
  for (const t of sent) assert.equal(texts.filter((x) => x === t).length, 1, `"${t}" should be there exactly once`);
  assert.equal(texts.length, sent.length, `unexpected messages: ${texts.filter((t) => !sent.includes(t))}`);
  for (const who of ['alice', 'bob']) {
    const theirs = hist.filter((m) => m.from === who && !m.deleted).map((m) => m.text);
    assert.deepEqual(theirs, sentBy[who], `${who}'s messages, in the order sent`);
  }
  assert.deepEqual(hist[1], { id: b1, from: 'bob', text: edited, edited: true, deleted: false, reactions: { '👍': 1 } });
  assert.equal(hist[2].deleted, true);
  assert.deepEqual(errors, [], 'errors in the pages');
  log(`both pages equal node 2's history: ${hist.length} messages`);

  // ---- screenshots
  await alice.mouse.move(0, 0);
  await bob.mouse.move(0, 0);
  await alice.screenshot({ path: join(outDir, 'alice.png') });
  await bob.screenshot({ path: join(outDir, 'bob.png') });
  if (process.env.E2E_DOCS_SCREENSHOT !== '0') copyFileSync(join(outDir, 'alice.png'), join(repo, 'docs/demo.png'));
  log(`screenshots in ${outDir}`);
});

// The console and switchboard.js in a real browser: Debian's chromium, headless, driven
// over the DevTools protocol by puppeteer-core. Run by tests/console.rs, which starts the
// servers and passes them in the environment:
//
//   SB_A_URL, SB_B_URL  two servers on one Redis, DURABLE_ROOMS=chat:*
//   SB_AUTH_URL         a server with AUTH_JWT_SECRET set
//   SB_TOKEN            a token from `switchboard token` for that server (sub alice,
//                       subscribe match:*, publish chat:**)
//   SB_ARTIFACTS        where the screenshots go
//   CHROMIUM            the browser (default /usr/bin/chromium)
//
// Control lines to the Rust side go on stdout as `@@{"cmd":"stop"|"start","server":"a"}`;
// the answer comes back as one JSON line on stdin. Every wait is a condition with a
// deadline (waitForFunction and friends), never a bare sleep.
'use strict';

const path = require('node:path');
const readline = require('node:readline');
const puppeteer = require('puppeteer-core');

const env = process.env;
const A = env.SB_A_URL;
const B = env.SB_B_URL;
const AUTH = env.SB_AUTH_URL;
const TOKEN = env.SB_TOKEN;
const ARTIFACTS = env.SB_ARTIFACTS || '.';
/** How long one condition may take before the step fails. */
const WAIT_MS = 15000;
/** Network errors the browser logs by itself while a server is down (expected only
 * around the restart). */
const NETWORK_NOISE = /ERR_CONNECTION_REFUSED|ERR_CONNECTION_RESET|ERR_EMPTY_RESPONSE|WebSocket connection to .* failed|Failed to load resource/;

// ---- the control channel to tests/console.rs ------------------------------------

const answers = [];
const askers = [];
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const answer = JSON.parse(line);
  if (askers.length) askers.shift()(answer);
  else answers.push(answer);
});

function control(cmd, server) {
  process.stdout.write('@@' + JSON.stringify({ cmd, server }) + '\n');
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(cmd + ' ' + server + ': no answer')), 30000);
    const done = (answer) => {
      clearTimeout(timer);
      if (answer.ok) resolve(answer);
      else reject(new Error(cmd + ' ' + server + ': ' + JSON.stringify(answer)));
    };
    if (answers.length) done(answers.shift());
    else askers.push(done);
  });
}

// ---- helpers -----------------------------------------------------------------------

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function publishHttp(base, room, type, data) {
  const response = await fetch(base + '/publish/' + room, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ type, data }),
  });
  const body = await response.json();
  check(response.status === 200 && body.ok, 'POST /publish/' + room + ': ' + response.status + ' ' + JSON.stringify(body));
  return body;
}

/** A console page on `base`, with every console error and page error recorded. */
async function openConsole(browser, base, label) {
  const page = await browser.newPage();
  await page.setViewport({ width: 1366, height: 820 });
  const problems = [];
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warn') problems.push(label + ' console.' + m.type() + ': ' + m.text());
  });
  page.on('pageerror', (e) => problems.push(label + ' page error: ' + e.message));
  await page.goto(base + '/', { waitUntil: 'load' });
  return { page, problems, label };
}

function noProblems(tab, allowNetwork) {
  const real = tab.problems.filter((p) => !(allowNetwork && NETWORK_NOISE.test(p)));
  check(real.length === 0, 'the page logged errors:\n  ' + real.join('\n  '));
}

/** `waitForFunction` polled on a timer: requestAnimationFrame (its default) does not
 * run in a page that is not in front. */
const POLL = { timeout: WAIT_MS, polling: 50 };

/** Brings the page to the front before the test types or clicks in it: a page in the
 * background does not get input events. */
async function front(tab) {
  await tab.page.bringToFront();
  return tab.page;
}

function waitState(tab, state) {
  return tab.page.waitForFunction(
    (s) => document.getElementById('status').dataset.state === s,
    POLL, state);
}

async function subscribeUi(tab, room) {
  await front(tab);
  await tab.page.type('#subscribe-room', room);
  await tab.page.click('#subscribe-form button[type=submit]');
  await waitJoined(tab, room);
}

function waitJoined(tab, room) {
  return tab.page.waitForFunction(
    (r) => { const li = document.querySelector('#rooms li[data-room="' + r + '"]'); return li && li.dataset.joined === 'true'; },
    POLL, room);
}

/** The events the page shows for `room`: `{type, offset, data}`, oldest first. */
function shown(tab, room) {
  return tab.page.evaluate((r) => Array.from(document.querySelectorAll('#events .event:not(.gap)'))
    .filter((row) => row.dataset.room === r)
    .map((row) => ({
      type: row.dataset.type,
      offset: row.dataset.offset ? Number(row.dataset.offset) : null,
      data: JSON.parse(row.querySelector('.data').textContent),
    })), room);
}

/** Waits until the page shows at least `count` events in `room`. */
function waitShown(tab, room, count) {
  return tab.page.waitForFunction(
    (r, n) => Array.from(document.querySelectorAll('#events .event:not(.gap)')).filter((row) => row.dataset.room === r).length >= n,
    POLL, room, count);
}

async function publishUi(tab, room, type, data) {
  await front(tab);
  const set = (selector, value) => tab.page.$eval(selector, (el, v) => { el.value = v; }, value);
  await set('#publish-room', room);
  await set('#publish-type', type);
  await set('#publish-data', JSON.stringify(data));
  await tab.page.click('#publish-button');
  await tab.page.waitForFunction(
    (r) => /^published in /.test(document.getElementById('publish-note').textContent) &&
      document.getElementById('publish-note').textContent.includes(r),
    POLL, room);
}

// ---- the steps ---------------------------------------------------------------------

const steps = [];
function step(name, run) {
  steps.push({ name, run });
}

const ctx = {};

step('the console loads with no console errors, health and peers shown', async () => {
  ctx.a = await openConsole(ctx.browser, A, 'A');
  await waitState(ctx.a, 'open');
  const health = await (await fetch(A + '/health')).json();
  const peer = (await (await fetch(B + '/health')).json()).serverId;
  await ctx.a.page.waitForFunction(
    (id, p) => document.getElementById('server-id').textContent === id &&
      document.getElementById('peers').textContent.includes(p) &&
      document.getElementById('health').textContent.includes('redis'),
    POLL, health.serverId, peer);
  const api = await ctx.a.page.evaluate(() => ['connect', 'backoffDelay', 'SwitchboardError'].every((k) => k in window.Switchboard));
  check(api, 'window.Switchboard lacks its API');
  noProblems(ctx.a);
});

step('a subscribed page receives an event published over HTTP on the other server', async () => {
  await subscribeUi(ctx.a, 'match:live');
  await publishHttp(B, 'match:live', 'goal', { n: 1, by: 'http on B' });
  await waitShown(ctx.a, 'match:live', 1);
  const events = await shown(ctx.a, 'match:live');
  check(events.length === 1 && events[0].type === 'goal' && events[0].data.n === 1, JSON.stringify(events));
  noProblems(ctx.a);
});

step('the publish form reaches a second page connected to the other server', async () => {
  ctx.b = await openConsole(ctx.browser, B, 'B');
  await waitState(ctx.b, 'open');
  await subscribeUi(ctx.b, 'chat:lobby');
  await subscribeUi(ctx.a, 'chat:lobby');
  await publishUi(ctx.a, 'chat:lobby', 'message', { text: 'from the form on A' });
  await waitShown(ctx.b, 'chat:lobby', 1);
  const onB = await shown(ctx.b, 'chat:lobby');
  check(onB.length === 1 && onB[0].data.text === 'from the form on A' && onB[0].offset >= 1, JSON.stringify(onB));
  await waitShown(ctx.a, 'chat:lobby', 1); // the publisher's own page too
  // Stats kept current: A's publisher counted the publish.
  await ctx.a.page.waitForFunction(
    () => /published\s*[1-9]/.test(document.getElementById('stats').innerText),
    POLL);
  noProblems(ctx.a);
  noProblems(ctx.b);
});

step('unsubscribe stops a room\'s events', async () => {
  await subscribeUi(ctx.a, 'match:other');
  await (await front(ctx.a)).click('#rooms li[data-room="match:live"] .unsubscribe');
  await ctx.a.page.waitForFunction(() => !document.querySelector('#rooms li[data-room="match:live"]'), POLL);
  // Both on B's one publishing link, so A's server receives them in this order.
  await publishHttp(B, 'match:live', 'goal', { n: 2 });
  await publishHttp(B, 'match:other', 'marker', { n: 1 });
  await waitShown(ctx.a, 'match:other', 1);
  const live = await shown(ctx.a, 'match:live');
  check(live.length === 1, 'match:live after unsubscribe: ' + JSON.stringify(live));
});

step('presence through switchboard.js: members on both servers, joins and leaves to the app', async () => {
  const room = 'lobby:browser';
  await ctx.a.page.evaluate((r) => {
    window.presenceNews = [];
    window.lobby = Switchboard.connect({});
    return window.lobby.subscribe(r, () => {}, { onPresence: (frame) => window.presenceNews.push(frame) });
  }, room);
  await ctx.b.page.evaluate((r) => {
    window.lobby = Switchboard.connect({});
    return window.lobby.subscribe(r, () => {});
  }, room);
  await ctx.a.page.waitForFunction(() => window.presenceNews.length >= 1, POLL);
  const listed = await ctx.b.page.evaluate((r) => window.lobby.presence(r), room);
  const servers = new Set(listed.members.map((m) => m.serverId));
  check(listed.members.length === 2 && servers.size === 2, 'presence: ' + JSON.stringify(listed));
  const count = await ctx.a.page.evaluate((r) => window.lobby.presenceCount(r), room);
  check(count.clients === 2 && count.users === 0, 'presence_count: ' + JSON.stringify(count));
  await ctx.b.page.evaluate((r) => window.lobby.unsubscribe(r), room);
  await ctx.a.page.waitForFunction(() => window.presenceNews.length >= 2, POLL);
  const news = await ctx.a.page.evaluate(() => window.presenceNews);
  const [join, leave] = news;
  check(news.length === 2 && join.op === 'join' && leave.op === 'leave'
    && join.member.client === leave.member.client
    && !listed.members.every((m) => m.client !== join.member.client), 'join/leave: ' + JSON.stringify(news));
  await ctx.a.page.evaluate(() => window.lobby.close());
  await ctx.b.page.evaluate(() => window.lobby.close());
  noProblems(ctx.a);
  noProblems(ctx.b);
});

step('a restart of the page\'s server: reconnects by itself, every durable event once', async () => {
  const room = 'chat:restart';
  await subscribeUi(ctx.a, room);
  for (let n = 1; n <= 3; n++) await publishHttp(B, room, 'tick', { n });
  await waitShown(ctx.a, room, 3);

  await control('stop', 'a');
  await ctx.a.page.waitForFunction(() => document.getElementById('status').dataset.state !== 'open', POLL);
  for (let n = 4; n <= 8; n++) await publishHttp(B, room, 'tick', { n });
  await control('start', 'a');

  await waitState(ctx.a, 'open');
  await waitShown(ctx.a, room, 8);
  await waitJoined(ctx.a, 'match:other');
  await publishHttp(B, room, 'tick', { n: 9 });
  await publishHttp(B, 'match:other', 'marker', { n: 2 });
  await waitShown(ctx.a, room, 9);
  await waitShown(ctx.a, 'match:other', 2);

  const events = await shown(ctx.a, room);
  const ns = events.map((e) => e.data.n);
  check(JSON.stringify(ns) === JSON.stringify([1, 2, 3, 4, 5, 6, 7, 8, 9]), 'events in ' + room + ': ' + JSON.stringify(ns));
  const offsets = events.map((e) => e.offset);
  check(offsets.every((o, i) => i === 0 || o === offsets[i - 1] + 1), 'offsets: ' + JSON.stringify(offsets));
  const gaps = await ctx.a.page.$$eval('#events .event.gap', (rows) => rows.map((r) => r.textContent));
  check(gaps.length === 0, 'gap notices: ' + JSON.stringify(gaps));
  noProblems(ctx.a, true);

  // The screenshot the README shows: rooms, events across a restart, health, peers.
  // Health kept current: the page reads it again once its server is back.
  await ctx.a.page.waitForFunction(
    () => document.getElementById('health-note').textContent.startsWith('updated') &&
      /healthy\s*yes/.test(document.getElementById('health').innerText),
    POLL);
  const file = path.join(ARTIFACTS, 'console.png');
  await (await front(ctx.a)).screenshot({ path: file });
  console.log('screenshot: ' + file);
});

step('recovered:false reaches the app (switchboard.js onGap)', async () => {
  const gap = await ctx.b.page.evaluate(() => new Promise((resolve, reject) => {
    const client = Switchboard.connect({ onGap: resolve });
    client.subscribe('chat:lobby', () => {}, { since: { offset: 1, epoch: 'not-this-epoch' } }).catch(reject);
    setTimeout(() => reject(new Error('no onGap within 10 s')), 10000);
  }));
  check(gap.reason === 'not_recovered' && gap.room === 'chat:lobby' && typeof gap.epoch === 'string', JSON.stringify(gap));
  noProblems(ctx.b);
});

step('with authentication on, the page asks for a token and works with one from `switchboard token`', async () => {
  const tab = await openConsole(ctx.browser, AUTH, 'auth');
  ctx.auth = tab;
  await tab.page.waitForSelector('#auth:not([hidden])', POLL);
  await tab.page.waitForFunction(() => document.getElementById('status').textContent === 'token needed', POLL);
  // A bad token: the server closes with 1008 and the page asks again.
  await tab.page.type('#token', 'not-a-token');
  await tab.page.click('#token-form button[type=submit]');
  await tab.page.waitForFunction(
    () => document.getElementById('token-note').textContent.includes('refused') &&
      document.getElementById('status').textContent === 'token needed',
    POLL);
  await tab.page.type('#token', TOKEN);
  await tab.page.click('#token-form button[type=submit]');
  await waitState(tab, 'open');
  const who = await tab.page.$eval('#user', (el) => el.textContent);
  check(who === 'as alice', 'user shown: ' + who);
  const stored = await tab.page.evaluate(() => sessionStorage.getItem('switchboard.token'));
  check(stored === TOKEN, 'the token is not in sessionStorage');
  check(!tab.page.url().includes(TOKEN.slice(0, 20)), 'the token is in the URL: ' + tab.page.url());
  await subscribeUi(tab, 'match:7');
  await tab.page.type('#subscribe-room', 'chat:lobby');
  await tab.page.click('#subscribe-form button[type=submit]');
  await tab.page.waitForFunction(() => document.getElementById('subscribe-note').textContent.includes('not_allowed'), POLL);
  await publishUi(tab, 'chat:lobby', 'message', { text: 'alice may publish here' });
  // A reload connects with the stored token, without asking.
  await tab.page.reload({ waitUntil: 'load' });
  await waitState(tab, 'open');
  noProblems(tab);
});

async function main() {
  ctx.browser = await puppeteer.launch({
    executablePath: env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
      // Pages in background tabs keep their timers (the reconnect backoff) on time.
      '--disable-background-timer-throttling', '--disable-renderer-backgrounding',
      '--disable-backgrounding-occluded-windows',
    ],
  });
  let passed = 0;
  try {
    for (const { name, run } of steps) {
      const started = Date.now();
      try {
        await run();
      } catch (error) {
        console.log('not ok - ' + name + '\n' + (error.stack || error));
        for (const tab of [ctx.a, ctx.b, ctx.auth].filter(Boolean)) {
          const file = path.join(ARTIFACTS, 'failed-' + tab.label + '.png');
          await tab.page.screenshot({ path: file }).catch(() => {});
          console.log('  page ' + tab.label + ' (' + file + '): ' + tab.problems.join(' | '));
        }
        process.exitCode = 1;
        return;
      }
      passed++;
      console.log('ok - ' + name + ' (' + (Date.now() - started) + ' ms)');
    }
  } finally {
    console.log('browser steps: ' + passed + ' of ' + steps.length + ' ok');
    await ctx.browser.close();
    process.stdin.destroy();
  }
}

main().catch((error) => {
  console.log(error.stack || String(error));
  process.exit(1);
});

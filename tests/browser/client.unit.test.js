// Unit tests of switchboard.js without a browser or a server (node:test): the backoff
// policy, and the client's bookkeeping against a scripted WebSocket: replies by ref,
// resubscribe with since after a reconnect, duplicates dropped, gaps handed over, and
// what a 1008 close does. Run by tests/console.rs (`node --test`).
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');

const Switchboard = require(path.join(__dirname, '../../src/console/switchboard.js'));

globalThis.location = { protocol: 'http:', host: 'switchboard.test', href: 'http://switchboard.test/' };

/** A WebSocket the test drives: it records what the client sends and lets the test
 * open, answer and close it. */
class ScriptedSocket {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    ScriptedSocket.all.push(this);
  }
  send(text) { this.sent.push(JSON.parse(text)); }
  close() { this.readyState = 3; }
  open() { this.readyState = 1; this.onopen(); }
  receive(frame) { this.onmessage({ data: JSON.stringify(frame) }); }
  drop(code, reason) { this.readyState = 3; this.onclose({ code, reason: reason || '' }); }
  last(op) { return this.sent.filter((f) => f.op === op).pop(); }
}
ScriptedSocket.all = [];
globalThis.WebSocket = ScriptedSocket;

const FAST = { backoff: { min: 1, max: 1, jitter: 0 }, pingInterval: 0, timeout: 1000 };
const tick = () => new Promise((resolve) => setTimeout(resolve, 5));

/** Waits (a few ms at a time, 2 s at most) until `condition()` holds. */
async function until(condition, what) {
  const deadline = Date.now() + 2000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('timed out waiting until ' + what);
    await tick();
  }
}

function newSocket(count) {
  return until(() => ScriptedSocket.all.length >= count, 'socket ' + count).then(() => ScriptedSocket.all[count - 1]);
}

function jwt(claims) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return part({ alg: 'HS256' }) + '.' + part(claims) + '.sig';
}

test('backoff doubles from min, stops at max, jitter takes off at most its share', () => {
  const policy = { min: 100, max: 1000, factor: 2, jitter: 0.5 };
  assert.deepEqual([0, 1, 2, 3, 4, 9].map((n) => Switchboard.backoffDelay(n, policy, () => 0)), [100, 200, 400, 800, 1000, 1000]);
  assert.equal(Switchboard.backoffDelay(2, policy, () => 1), 200);
  assert.equal(Switchboard.backoffDelay(-3, policy, () => 0), 100);
  for (let i = 0; i < 100; i++) {
    const d = Switchboard.backoffDelay(3, policy);
    assert.ok(d >= 400 && d <= 800, String(d));
  }
  assert.equal(Switchboard.backoffDelay(0, undefined, () => 0), Switchboard.DEFAULT_BACKOFF.min);
});

test('tokenExpiry reads exp without checking the signature', () => {
  assert.equal(Switchboard.tokenExpiry(jwt({ sub: 'a', exp: 1700000000 })), 1700000000 * 1000);
  assert.equal(Switchboard.tokenExpiry('not a token'), null);
  assert.equal(Switchboard.tokenExpiry(jwt({ sub: 'a' })), null);
});

test('a reconnect resubscribes with since, and nothing arrives twice', async (t) => {
  ScriptedSocket.all = [];
  const client = Switchboard.connect(Object.assign({}, FAST, { url: '/ws' }));
  t.after(() => client.close());
  const first = await newSocket(1);
  assert.equal(first.url, 'ws://switchboard.test/ws');
  first.open();
  const seen = [];
  const gaps = [];
  const subscribed = client.subscribe('chat:1', (e) => seen.push(e.offset), { onGap: (g) => gaps.push(g) });
  const sub = first.last('subscribe');
  assert.equal(sub.since, undefined);
  first.receive({ op: 'subscribed', room: 'chat:1', offset: 4, epoch: 'e1', ref: sub.ref });
  assert.equal((await subscribed).offset, 4);
  for (const offset of [5, 6, 6, 4]) first.receive({ op: 'event', room: 'chat:1', event: { type: 't', offset, epoch: 'e1' } });
  assert.deepEqual(seen, [5, 6]);
  assert.equal(client.duplicatesDropped, 2);

  first.drop(1006);
  const second = await newSocket(2);
  second.open();
  const again = second.last('subscribe');
  assert.deepEqual(again.since, { offset: 6, epoch: 'e1' });
  second.receive({ op: 'subscribed', room: 'chat:1', offset: 6, epoch: 'e1', recovered: true, ref: again.ref });
  second.receive({ op: 'event', room: 'chat:1', event: { type: 't', offset: 7, epoch: 'e1' } });
  second.receive({ op: 'gap', room: 'chat:1', reason: 'history_lost', epoch: 'e2', offset: 40 });
  second.receive({ op: 'event', room: 'chat:1', event: { type: 't', offset: 41, epoch: 'e2' } });
  assert.deepEqual(seen, [5, 6, 7, 41]);
  assert.deepEqual(gaps.map((g) => g.reason), ['history_lost']);
  assert.deepEqual(client.position('chat:1'), { offset: 41, epoch: 'e2' });

  second.drop(1001);
  const third = await newSocket(3);
  third.open();
  const last = third.last('subscribe');
  third.receive({ op: 'subscribed', room: 'chat:1', offset: 90, epoch: 'e3', recovered: false, ref: last.ref });
  assert.deepEqual(gaps.at(-1), { room: 'chat:1', reason: 'not_recovered', offset: 90, epoch: 'e3' });
  client.close();
});

test('a filter goes with the subscribe, and with every resubscribe', async (t) => {
  ScriptedSocket.all = [];
  const client = Switchboard.connect(FAST);
  t.after(() => client.close());
  const first = await newSocket(1);
  first.open();
  const filter = { types: ['match_started'], data: { 'match.region': 'eu' } };
  const subscribed = client.subscribe('match:events', () => {}, { filter });
  const sub = first.last('subscribe');
  assert.deepEqual(sub.filter, filter);
  first.receive({ op: 'subscribed', room: 'match:events', ref: sub.ref });
  await subscribed;
  first.drop(1006);
  const second = await newSocket(2);
  second.open();
  assert.deepEqual(second.last('subscribe').filter, filter);
  const again = second.last('subscribe');
  second.receive({ op: 'subscribed', room: 'match:events', ref: again.ref });

  // A joined room subscribed again with a filter the server refuses keeps the old one.
  const refused = client.subscribe('match:events', () => {}, { filter: { types: [] } });
  const bad = second.last('subscribe');
  assert.deepEqual(bad.filter, { types: [] });
  second.receive({ op: 'error', code: 'bad_frame', message: 'no type', ref: bad.ref });
  await assert.rejects(refused, (e) => e.code === 'bad_frame');
  second.drop(1006);
  const third = await newSocket(3);
  third.open();
  assert.deepEqual(third.last('subscribe').filter, filter, 'still joined, with its filter');
  client.close();
});

test('requests settle by ref; an error reply rejects with its code', async (t) => {
  ScriptedSocket.all = [];
  const client = Switchboard.connect(FAST);
  t.after(() => client.close());
  const socket = await newSocket(1);
  const early = client.publish('chat:1', { type: 't' }); // waits for the connection
  socket.open();
  await until(() => socket.last('publish'), 'the publish is sent');
  const history = client.history('chat:1', { limit: 5 });
  await until(() => socket.last('history'), 'the history read is sent');
  socket.receive({ op: 'history', room: 'chat:1', events: [], ref: socket.last('history').ref });
  socket.receive({ op: 'error', code: 'not_allowed', message: 'no', ref: socket.last('publish').ref });
  assert.deepEqual((await history).events, []);
  await assert.rejects(early, (e) => e.code === 'not_allowed');
  const presence = client.presence('room:1');
  await until(() => socket.last('presence'), 'the presence read is sent');
  socket.drop(1006);
  await assert.rejects(presence, (e) => e.code === 'connection_lost');
  client.close();
});

test('after 1008 a fresh token is asked for before the next connection', async (t) => {
  ScriptedSocket.all = [];
  const asked = [];
  const tokens = [jwt({ sub: 'alice', exp: Date.now() / 1000 + 3600 }), 'fresh'];
  const client = Switchboard.connect(Object.assign({}, FAST, {
    getToken: (context) => { asked.push(context.reason); return tokens.shift(); },
  }));
  t.after(() => client.close());
  const first = await newSocket(1);
  first.open();
  const auth = first.last('auth');
  assert.equal(auth.token.split('.').length, 3);
  assert.equal(first.sent[0].op, 'auth', 'the token is the first frame');
  first.receive({ op: 'authenticated', sub: 'alice', ref: auth.ref });
  assert.equal(client.state, 'open');
  assert.equal(client.user, 'alice');

  first.drop(1001); // a restart: the same token is still good
  const second = await newSocket(2);
  second.open();
  assert.equal(second.last('auth').token, auth.token);
  assert.deepEqual(asked, ['connect']);

  second.drop(1008, 'token expired');
  const third = await newSocket(3);
  assert.deepEqual(asked, ['connect', 'refused']);
  third.open();
  assert.equal(third.last('auth').token, 'fresh');
  client.close();

});

test('after 1008 without getToken the client stays closed', async (t) => {
  ScriptedSocket.all = [];
  const states = [];
  const plain = Switchboard.connect(Object.assign({}, FAST, { onState: (s) => states.push(s) }));
  t.after(() => plain.close());
  const only = await newSocket(1);
  only.open();
  only.drop(1008);
  await tick();
  assert.equal(plain.state, 'closed');
  assert.equal(ScriptedSocket.all.length, 1, 'no reconnect after 1008 without getToken');
  assert.deepEqual(states, ['connecting', 'open', 'closed']);
});

// The console page (GET /): a thin layer of DOM over switchboard.js. It keeps the rooms
// the user joined, the last events of each, and polls /health and /stats.
(function () {
  'use strict';

  /** Where the token lives: this tab's session storage, never the URL. */
  const TOKEN_KEY = 'switchboard.token';
  /** /health and /stats are read this often. */
  const POLL_MS = 2000;
  /** Rows kept in the event log, oldest dropped first. */
  const MAX_ROWS = 1000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $('status'), user: $('user'), serverId: $('server-id'), toggle: $('connect-toggle'),
    auth: $('auth'), tokenForm: $('token-form'), token: $('token'), tokenNote: $('token-note'),
    subscribeForm: $('subscribe-form'), subscribeRoom: $('subscribe-room'), subscribeNote: $('subscribe-note'),
    rooms: $('rooms'), roomNames: $('room-names'),
    publishForm: $('publish-form'), publishRoom: $('publish-room'), publishType: $('publish-type'),
    publishData: $('publish-data'), publishNote: $('publish-note'),
    events: $('events'), eventsEmpty: $('events-empty'), eventCount: $('event-count'), logTitle: $('log-title'),
    health: $('health'), healthNote: $('health-note'), peers: $('peers'), stats: $('stats'),
  };

  /** room -> {count, durable}; the rooms the user wants, across reconnects. */
  const rooms = new Map();
  let client = null;
  let authOn = false;
  let selected = null;
  let tokenWaiter = null;
  let rows = 0;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function note(node, text, kind) {
    node.textContent = text;
    node.className = 'note' + (kind ? ' ' + kind : '');
  }

  // ---- connection -------------------------------------------------------------

  function showState(state, detail) {
    ui.status.dataset.state = state;
    let text = state;
    if (state === 'connecting' && detail.step === 'token') text = 'token needed';
    else if (state === 'connecting') text = 'connecting';
    else if (state === 'waiting') text = 'reconnecting in ' + (detail.delay / 1000).toFixed(1) + ' s';
    else if (state === 'closed') text = 'disconnected';
    ui.status.textContent = text;
    ui.toggle.textContent = state === 'closed' ? 'Connect' : 'Disconnect';
    ui.user.textContent = state === 'open' && client && client.user ? 'as ' + client.user : '';
    if (state !== 'open') {
      for (const info of rooms.values()) info.joined = false;
    }
    for (const room of rooms.keys()) renderRoom(room);
  }

  /** getToken for switchboard.js: the stored token first, else the form. */
  function getToken(context) {
    const stored = sessionStorage.getItem(TOKEN_KEY);
    if (context.reason === 'connect' && stored) return stored;
    if (context.reason === 'refused') {
      sessionStorage.removeItem(TOKEN_KEY);
      note(ui.tokenNote, 'The server refused the token (invalid or expired): paste a new one.', 'bad');
    } else if (context.reason === 'expiring') {
      note(ui.tokenNote, 'The token expires soon: paste a fresh one to stay connected.', 'bad');
    }
    ui.auth.hidden = false;
    ui.token.value = '';
    ui.token.focus();
    if (tokenWaiter) tokenWaiter(null);
    return new Promise((resolve) => { tokenWaiter = resolve; });
  }

  function connectClient() {
    if (client) client.close();
    client = Switchboard.connect({
      getToken: authOn ? getToken : undefined,
      onState: showState,
      onGap: (gap) => addGap(gap),
      onEnd: (end) => {
        addNotice(end.room, 'left the room: ' + end.reason);
        rooms.delete(end.room);
        renderRooms();
      },
      onError: (error) => note(ui.subscribeNote, String(error.message || error), 'bad'),
    });
    for (const room of rooms.keys()) join(room);
  }

  ui.tokenForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const token = ui.token.value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    ui.token.value = '';
    note(ui.tokenNote, 'Token kept in this tab for this session.', 'ok');
    if (tokenWaiter) {
      const resolve = tokenWaiter;
      tokenWaiter = null;
      resolve(token);
    } else {
      connectClient();
    }
  });

  $('forget-token').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    connectClient();
  });

  ui.toggle.addEventListener('click', () => {
    if (client && client.state !== 'closed') client.close();
    else connectClient();
  });

  // ---- rooms ------------------------------------------------------------------

  function join(room) {
    if (!rooms.has(room)) rooms.set(room, { count: 0 });
    renderRooms();
    const onSubscribed = (reply) => {
      const info = rooms.get(room);
      if (!info) return;
      info.durable = typeof reply.epoch === 'string';
      info.joined = true;
      renderRoom(room);
    };
    return client.subscribe(room, (event, from) => addEvent(from, event), { onSubscribed }).then(
      () => note(ui.subscribeNote, 'subscribed to ' + room, 'ok'),
      (error) => {
        if (error.code === 'unsubscribed' || error.code === 'closed') return;
        rooms.delete(room);
        renderRooms();
        note(ui.subscribeNote, room + ': ' + error.code + (error.message ? ' (' + error.message + ')' : ''), 'bad');
      });
  }

  ui.subscribeForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const room = ui.subscribeRoom.value.trim();
    if (!room) return;
    ui.subscribeRoom.value = '';
    if (!ui.publishRoom.value) ui.publishRoom.value = room;
    join(room);
  });

  function leave(room) {
    rooms.delete(room);
    if (selected === room) select(null);
    renderRooms();
    client.unsubscribe(room).catch(() => {});
  }

  function renderRooms() {
    ui.rooms.replaceChildren();
    ui.roomNames.replaceChildren();
    for (const room of rooms.keys()) {
      const item = el('li');
      item.dataset.room = room;
      ui.rooms.append(item);
      ui.roomNames.append(Object.assign(el('option'), { value: room }));
      renderRoom(room);
    }
  }

  function renderRoom(room) {
    const item = ui.rooms.querySelector('li[data-room="' + CSS.escape(room) + '"]');
    const info = rooms.get(room);
    if (!item || !info) return;
    item.classList.toggle('selected', selected === room);
    item.dataset.joined = String(Boolean(info.joined));
    item.title = info.joined ? 'subscribed' : 'subscribing...';
    const position = client && client.position(room);
    const button = el('button', 'secondary unsubscribe', '\u00d7');
    button.type = 'button';
    button.title = 'Unsubscribe from ' + room;
    button.setAttribute('aria-label', button.title);
    button.addEventListener('click', (e) => { e.stopPropagation(); leave(room); });
    item.replaceChildren(
      el('span', 'name', room),
      el('span', 'badge' + (info.durable ? ' durable' : ''), info.durable && position ? 'offset ' + position.offset : info.durable ? 'durable' : 'live'),
      el('span', 'badge count', String(info.count)),
      button);
    item.onclick = () => select(selected === room ? null : room);
  }

  function select(room) {
    selected = room;
    ui.logTitle.textContent = room ? 'Events: ' + room : 'Events: all rooms';
    for (const row of ui.events.querySelectorAll('.event')) row.hidden = room !== null && row.dataset.room !== room;
    for (const r of rooms.keys()) renderRoom(r);
  }
  $('show-all').addEventListener('click', () => select(null));
  $('clear-log').addEventListener('click', () => {
    ui.events.querySelectorAll('.event').forEach((row) => row.remove());
    rows = 0;
    countRows();
  });

  // ---- the event log ----------------------------------------------------------

  function clock(ms) {
    const d = ms ? new Date(ms) : new Date();
    return d.toTimeString().slice(0, 8) + '.' + String(d.getMilliseconds()).padStart(3, '0');
  }

  function append(row) {
    ui.eventsEmpty.hidden = true;
    row.hidden = selected !== null && row.dataset.room !== selected;
    const stick = ui.events.scrollTop + ui.events.clientHeight >= ui.events.scrollHeight - 4;
    ui.events.append(row);
    if (++rows > MAX_ROWS) {
      ui.events.querySelector('.event').remove();
      rows--;
    }
    if (stick) ui.events.scrollTop = ui.events.scrollHeight;
    countRows();
  }

  function countRows() {
    ui.eventCount.textContent = rows + (rows === 1 ? ' event' : ' events');
  }

  function addEvent(room, event) {
    const row = el('div', 'event');
    row.dataset.room = room;
    row.dataset.type = String(event.type);
    if (typeof event.offset === 'number') row.dataset.offset = String(event.offset);
    row.append(
      el('span', 'time', clock(event.timestamp)),
      el('span', 'room', room),
      el('span', 'type', String(event.type)),
      el('span', 'offset', typeof event.offset === 'number' ? '#' + event.offset : ''),
      el('span', 'data', JSON.stringify(event.data === undefined ? null : event.data)));
    const from = el('span', 'from', event.serverId ? String(event.serverId) : '');
    from.title = event.serverId ? 'published on ' + event.serverId : 'published outside Switchboard';
    row.append(from);
    append(row);
    const info = rooms.get(room);
    if (info) {
      info.count++;
      renderRoom(room);
    }
  }

  function addGap(gap) {
    const what = gap.reason === 'not_recovered'
      ? 'could not replay what was missed: reload this room\'s state'
      : 'events may be missing (' + gap.reason + ')';
    addNotice(gap.room, 'gap: ' + what + (gap.offset !== undefined ? '; continuing after offset ' + gap.offset : ''), gap.reason);
  }

  function addNotice(room, text, reason) {
    const row = el('div', 'event gap');
    row.dataset.room = room;
    if (reason) row.dataset.gap = reason;
    row.append(el('span', 'time', clock()), el('span', 'room', room), el('span', 'type', 'notice'),
      el('span', 'offset', ''), el('span', 'data', text), el('span', 'from', ''));
    append(row);
  }

  // ---- publish ----------------------------------------------------------------

  ui.publishForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const room = ui.publishRoom.value.trim();
    const type = ui.publishType.value.trim();
    let data;
    try {
      data = ui.publishData.value.trim() ? JSON.parse(ui.publishData.value) : null;
    } catch (error) {
      note(ui.publishNote, 'Data is not JSON: ' + error.message, 'bad');
      return;
    }
    if (!room || !type) {
      note(ui.publishNote, 'A room and a type are needed.', 'bad');
      return;
    }
    note(ui.publishNote, 'publishing...');
    client.publish(room, { type, data }).then(
      (reply) => note(ui.publishNote, 'published in ' + room + (reply.offset !== undefined ? ' at offset ' + reply.offset : ''), 'ok'),
      (error) => note(ui.publishNote, error.code + ': ' + error.message, 'bad'));
  });

  // ---- health, peers, stats ---------------------------------------------------

  function facts(list, pairs) {
    list.replaceChildren();
    for (const [name, value] of pairs) {
      const dd = el('dd', typeof value === 'boolean' ? (value ? 'yes' : 'no') : '', typeof value === 'boolean' ? (value ? 'yes' : 'no') : String(value == null ? '-' : value));
      list.append(el('dt', '', name), dd);
    }
  }

  async function readJson(path) {
    const response = await fetch(path, { cache: 'no-store' });
    return response.json();
  }

  async function poll() {
    try {
      const [health, stats] = await Promise.all([readJson('/health'), readJson('/stats')]);
      ui.serverId.textContent = health.serverId || '';
      facts(ui.health, [
        ['healthy', health.isHealthy], ['backplane', health.backplane],
        ['publisher ready', health.publisherReady], ['subscriber ready', health.subscriberReady],
        ['rooms held', health.activeSubscriptions], ['reconnect attempts', health.reconnectAttempts],
        ['authentication', health.auth ? 'on' : 'off'],
      ]);
      ui.peers.replaceChildren();
      for (const peer of health.peers || []) {
        const item = el('li');
        item.append(el('span', '', peer.serverId), el('span', 'badge', (peer.connections || 0) + ' conn'));
        ui.peers.append(item);
      }
      if (!(health.peers || []).length) ui.peers.append(el('li', 'note', 'no other server'));
      const pub = stats.publisher || {}, sub = stats.subscriber || {}, conn = stats.connections || {};
      facts(ui.stats, [
        ['published', pub.totalPublished], ['publishes failed', pub.failedPublishes],
        ['received', sub.totalReceived], ['invalid events', sub.failedEvents],
        ['gaps recovered', sub.gapsRecovered], ['gaps unrecovered', sub.gapsUnrecovered],
        ['connections', conn.open], ['slow consumers closed', conn.slowConsumerCloses],
      ]);
      note(ui.healthNote, 'updated ' + clock());
      ui.health.classList.remove('stale');
      ui.stats.classList.remove('stale');
    } catch (error) {
      note(ui.healthNote, 'server unreachable (' + error.message + ')', 'bad');
      ui.health.classList.add('stale');
      ui.stats.classList.add('stale');
    }
  }

  // ---- start ------------------------------------------------------------------

  async function start() {
    try {
      authOn = Boolean((await readJson('/health')).auth);
    } catch (_) {
      authOn = false;
    }
    ui.auth.hidden = !authOn;
    connectClient();
    poll();
    setInterval(poll, POLL_MS);
  }

  // For a look from the developer tools: the client and the rooms.
  window.switchboardConsole = { get client() { return client; }, rooms };
  start();
})();

/**
 * switchboard.js: the browser client of Switchboard (PROTOCOL.md §2, §6-9).
 *
 * No dependencies, no build step. Served by every Switchboard at `GET /switchboard.js`;
 * `<script src="/switchboard.js"></script>` defines `window.Switchboard` (under Node or
 * a bundler, `module.exports`).
 *
 *     const sb = Switchboard.connect({
 *       // Only with authentication on: called before a connection needs a token.
 *       getToken: async ({ reason }) => (await fetch('/api/switchboard-token')).text(),
 *       onState: (state, detail) => showStatus(state, detail),
 *     });
 *     await sb.subscribe('chat:lobby', (event) => render(event), {
 *       onGap: (gap) => reloadFromYourApi(gap.room), // events were lost
 *     });
 *     await sb.publish('chat:lobby', { type: 'message', data: { text: 'hi' } });
 *     const page = await sb.history('chat:lobby', { limit: 50 });
 *
 * What it does so the app does not have to:
 *
 * - Requests carry a `ref`; each promise settles with the server's reply to that
 *   frame (an `error` reply rejects it with a `SwitchboardError` whose `code` is the
 *   server's error code), or rejects with `timeout` or `connection_lost`.
 * - A lost connection is opened again after a capped exponential backoff with jitter
 *   (`backoffDelay`), forever, until `close()`. Then every room is subscribed again:
 *   a durable room with `since` set to the last offset and epoch the client saw, so
 *   the server replays exactly what was missed. Replayed or live, an event of a
 *   durable room at or before the last offset seen is dropped, so none arrives twice.
 * - Lost events are never silent: a `gap` frame, and a `subscribed` reply with
 *   `recovered: false` (the server could not replay; reload your state), both reach the
 *   room's `onGap` (or the connection's), as `{room, reason, offset, epoch}` with
 *   `reason` `link_lost`, `history_lost` or `not_recovered`.
 * - Authentication: the token from `getToken` is sent as the first frame
 *   `{"op":"auth","token":...}` and used again for later reconnects while it is valid.
 *   Before it expires, `getToken({reason: 'expiring'})` is asked for a fresh one, sent
 *   on the open connection. After a close with 1008 (token refused or expired, policy)
 *   the client does not reconnect with the same token: it asks
 *   `getToken({reason: 'refused'})`, and stays closed when that gives nothing.
 *   Without `getToken`, a 1008 close ends the client.
 *
 * Connection states (`onState(state, detail)`, and `client.state`): `connecting`
 * (detail.step `token`, `socket` or `auth`), `open`, `waiting` (detail.delay ms before
 * the next attempt), `closed` (detail.code and detail.reason when the server closed it
 * for good).
 */
(function (root, factory) {
  'use strict';
  const api = factory();
  if (typeof module === 'object' && module.exports) {
    module.exports = api;
  } else {
    root.Switchboard = api;
  }
})(typeof self !== 'undefined' ? self : this, function () {
  'use strict';

  /** WebSocket close codes the client acts on (RFC 6455 §7.4, PROTOCOL.md §2 and §6). */
  const CLOSE = Object.freeze({
    NORMAL: 1000,
    GOING_AWAY: 1001,
    POLICY: 1008,
    /** Sent by this client when the server stopped answering pings. */
    NO_PONG: 4000,
  });

  /**
   * The reconnect policy: the delay before retry `attempt` (0 for the first) is
   * `min(max, min * factor^attempt)` ms, less a random share of up to `jitter` of it,
   * so the clients a restart dropped together do not all come back at the same
   * instant. Reset once a connection is open (and authenticated).
   */
  const DEFAULT_BACKOFF = Object.freeze({ min: 500, max: 15000, factor: 2, jitter: 0.5 });

  /** Defaults of `connect`'s options, in milliseconds. */
  const DEFAULTS = Object.freeze({
    /** How long a request waits for its reply. */
    timeout: 10000,
    /** An application `ping` this often while open, to find a dead link. */
    pingInterval: 25000,
    /** A token is renewed when this share of its lifetime is left... */
    renewShare: 0.1,
    /** ...but at least this long before it expires. */
    renewMargin: 5000,
  });

  /** The delay before reconnect attempt `attempt` under `policy` (see DEFAULT_BACKOFF). */
  function backoffDelay(attempt, policy, random) {
    const p = Object.assign({}, DEFAULT_BACKOFF, policy || {});
    const draw = (random || Math.random)();
    const ceiling = Math.min(p.max, p.min * Math.pow(p.factor, Math.max(0, attempt)));
    return Math.round(ceiling * (1 - p.jitter * draw));
  }

  /** A refused request: `code` is the server's error code, or `timeout`,
   * `connection_lost`, `not_connected`, `unsubscribed`, `closed`. */
  class SwitchboardError extends Error {
    constructor(code, message, frame) {
      super(message || code);
      this.name = 'SwitchboardError';
      this.code = code;
      this.frame = frame || null;
    }
  }

  /** The `exp` of a JWT in ms since the epoch, or null (the client does not verify it:
   * it only needs to know when to ask for a fresh one). */
  function tokenExpiry(token) {
    try {
      const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const exp = JSON.parse(atob(payload + '==='.slice((payload.length + 3) % 4))).exp;
      return typeof exp === 'number' ? exp * 1000 : null;
    } catch (_) {
      return null;
    }
  }

  function defaultUrl() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return scheme + '//' + location.host + '/ws';
  }

  function absoluteUrl(url) {
    if (!url) return defaultUrl();
    if (/^wss?:\/\//.test(url)) return url;
    const resolved = new URL(url, location.href);
    resolved.protocol = resolved.protocol === 'https:' ? 'wss:' : 'ws:';
    return resolved.href;
  }

  /** Calls an application callback; its exception is reported, not thrown into the
   * client's own bookkeeping. */
  function safely(callback, ...args) {
    if (typeof callback !== 'function') return;
    try {
      callback(...args);
    } catch (error) {
      if (typeof reportError === 'function') reportError(error);
      else setTimeout(() => { throw error; });
    }
  }

  /** One connection to a Switchboard server, kept open until `close()`. */
  class Client {
    constructor(options) {
      this.options = Object.assign({}, DEFAULTS, options || {});
      this.url = absoluteUrl(this.options.url);
      this.state = 'idle';
      /** The authenticated user (`sub`), or null. */
      this.user = null;
      /** Events of durable rooms dropped because their offset was seen already. */
      this.duplicatesDropped = 0;
      this._rooms = new Map();
      this._pending = new Map();
      this._nextRef = 1;
      this._attempt = 0;
      this._socket = null;
      this._token = null;
      this._tokenReason = 'connect';
      this._closedByApp = false;
      this._openWaiters = [];
      this._timers = {};
    }

    /** The rooms the client holds (subscribed, or to subscribe once connected). */
    rooms() {
      return Array.from(this._rooms.keys());
    }

    /** The last `{offset, epoch}` seen in a durable room, or null. */
    position(room) {
      const record = this._rooms.get(room);
      return record && record.position ? Object.assign({}, record.position) : null;
    }

    /**
     * Joins `room`: `handler(envelope, room)` gets each event. Options: `since`
     * (`{offset, epoch}`: recover what followed it in a durable room), `filter`
     * (`{types, data}`: only the events it lets through, PROTOCOL.md §12; kept across
     * reconnects), `onGap(gap)`,
     * `onSubscribed(reply)` (every `subscribed` reply: the first and each one after a
     * reconnect), `onPresence(frame)` (`join` and `leave` frames of a presence room),
     * `onEnd({room, reason})` (the server took the client out of the room, or refused
     * to subscribe it again after a reconnect). Resolves with the first `subscribed`
     * reply; the room is kept across reconnects until `unsubscribe`.
     */
    subscribe(room, handler, options) {
      if (typeof handler !== 'function') {
        return Promise.reject(new TypeError('subscribe(room, handler): handler is not a function'));
      }
      const opts = Object.assign({}, options || {});
      let record = this._rooms.get(room);
      if (!record) {
        record = { room, waiters: [], position: null };
        this._rooms.set(room, record);
      }
      // A room already joined keeps what it had if the server refuses this frame.
      if (record.joined) record.previous = { handler: record.handler, options: record.options };
      record.handler = handler;
      record.options = opts;
      if (opts.since) record.position = { offset: opts.since.offset, epoch: opts.since.epoch };
      return new Promise((resolve, reject) => {
        record.waiters.push({ resolve, reject });
        if (this.state === 'open') this._sendSubscribe(record);
      });
    }

    /** Leaves `room`; resolves with the `unsubscribed` reply (at once when offline). */
    unsubscribe(room) {
      const record = this._rooms.get(room);
      this._rooms.delete(room);
      if (record) this._settleWaiters(record, new SwitchboardError('unsubscribed', 'unsubscribed from ' + room));
      if (this.state !== 'open') return Promise.resolve({ op: 'unsubscribed', room });
      return this._request({ op: 'unsubscribe', room });
    }

    /** Publishes `event` (`{type, data}`); resolves with `published` (with `offset` and
     * `epoch` in a durable room). Option `idempotencyKey`: a retry with the same key is
     * answered like the first publish and not published again. */
    publish(room, event, options) {
      const frame = { op: 'publish', room, event };
      if (options && options.idempotencyKey) frame.idempotencyKey = options.idempotencyKey;
      return this._whenOpen().then(() => this._request(frame));
    }

    /** Reads a durable room's history: options `since` (`{offset, epoch}`) and `limit`. */
    history(room, options) {
      const frame = { op: 'history', room };
      if (options && options.since) frame.since = options.since;
      if (options && options.limit) frame.limit = options.limit;
      return this._whenOpen().then(() => this._request(frame));
    }

    /** The members of a presence room, on every server: resolves with
     * `{op: 'presence', room, members: [...]}` (PROTOCOL.md §9). */
    presence(room) {
      return this._whenOpen().then(() => this._request({ op: 'presence', room }));
    }

    /** `{clients, users}` of a presence room (PROTOCOL.md §9). */
    presenceCount(room) {
      return this._whenOpen().then(() => this._request({ op: 'presence_count', room }));
    }

    /** Closes the connection and stops reconnecting; `reconnect()` starts again. */
    close() {
      this._closedByApp = true;
      this._clearTimers();
      const socket = this._socket;
      this._socket = null;
      if (socket) socket.close(CLOSE.NORMAL);
      this._lost(new SwitchboardError('closed', 'the client was closed'));
      this._setState('closed', {});
    }

    /** Opens a connection now (after `close()`, or to skip a backoff wait). */
    reconnect() {
      this._closedByApp = false;
      clearTimeout(this._timers.retry);
      if (this._socket || this.state === 'connecting') return;
      this._open();
    }

    _setState(state, detail) {
      this.state = state;
      safely(this.options.onState, state, detail || {});
      if (state === 'open' || state === 'closed') {
        const waiters = this._openWaiters;
        this._openWaiters = [];
        waiters.forEach((w) => (state === 'open' ? w.resolve() : w.reject(new SwitchboardError('not_connected', 'the client is closed'))));
      }
    }

    /** Resolves once open (at most `timeout` from now); rejects when closed. */
    _whenOpen() {
      if (this.state === 'open') return Promise.resolve();
      if (this.state === 'closed') return Promise.reject(new SwitchboardError('not_connected', 'the client is closed'));
      return new Promise((resolve, reject) => {
        const waiter = { resolve, reject };
        const timer = setTimeout(() => {
          this._openWaiters = this._openWaiters.filter((w) => w !== waiter);
          reject(new SwitchboardError('not_connected', 'not connected within ' + this.options.timeout + ' ms'));
        }, this.options.timeout);
        waiter.resolve = () => { clearTimeout(timer); resolve(); };
        waiter.reject = (e) => { clearTimeout(timer); reject(e); };
        this._openWaiters.push(waiter);
      });
    }

    async _open() {
      this._closedByApp = false;
      if (this.options.getToken && !this._tokenUsable()) {
        this._setState('connecting', { step: 'token', reason: this._tokenReason });
        let token = null;
        try {
          token = await this.options.getToken({ reason: this._tokenReason });
        } catch (error) {
          safely(this.options.onError, error);
        }
        if (this._closedByApp) return;
        if (!token) {
          this._setState('closed', { reason: 'no token' });
          return;
        }
        this._token = token;
      }
      this._setState('connecting', { step: 'socket', attempt: this._attempt });
      let socket;
      try {
        socket = new WebSocket(this.url);
      } catch (error) {
        this._setState('closed', { reason: String(error) });
        return;
      }
      this._socket = socket;
      socket.onopen = () => this._onOpen(socket);
      socket.onmessage = (message) => this._onMessage(socket, message.data);
      socket.onclose = (event) => this._onClose(socket, event.code, event.reason);
    }

    _tokenUsable() {
      if (!this._token) return false;
      const expiry = tokenExpiry(this._token);
      return expiry === null || expiry - Date.now() > this.options.renewMargin;
    }

    _onOpen(socket) {
      if (socket !== this._socket) return;
      if (!this.options.getToken) {
        this._ready();
        return;
      }
      this._setState('connecting', { step: 'auth' });
      this._send({ op: 'auth', token: this._token }, {
        reply: (reply) => {
          this.user = reply.sub == null ? null : reply.sub;
          this._scheduleRenewal();
          this._ready();
        },
        // A refused token closes the connection with 1008; _onClose handles it.
        error: () => {},
      });
    }

    _ready() {
      this._attempt = 0;
      this._tokenReason = 'connect';
      this._setState('open', { user: this.user });
      for (const record of this._rooms.values()) this._sendSubscribe(record);
      this._schedulePing();
    }

    _sendSubscribe(record) {
      const frame = { op: 'subscribe', room: record.room };
      const since = record.position;
      if (since) frame.since = { offset: since.offset, epoch: since.epoch };
      if (record.options.filter) frame.filter = record.options.filter;
      this._send(frame, {
        reply: (reply) => this._subscribed(record, reply, Boolean(since)),
        error: (error) => {
          if (this._rooms.get(record.room) !== record) return;
          if (error.code === 'connection_lost') return; // subscribed again on reconnect
          const transient = error.code === 'subscribe_failed' || error.code === 'timeout';
          if (transient && !record.waiters.length) {
            // A resubscribe the server could not confirm in time: try again shortly.
            this._timers['sub:' + record.room] = setTimeout(() => {
              if (this.state === 'open' && this._rooms.get(record.room) === record) this._sendSubscribe(record);
            }, backoffDelay(0, this.options.backoff));
            return;
          }
          if (error.code === 'bad_frame' && record.previous) {
            // A joined room subscribed again with a frame the server refused (a bad
            // filter): the server keeps the room as it was, and so does the client.
            Object.assign(record, record.previous);
            record.previous = null;
            this._settleWaiters(record, error);
            return;
          }
          // Refused (or the app's own subscribe failed: it decides whether to retry).
          this._rooms.delete(record.room);
          const waited = record.waiters.length > 0;
          this._settleWaiters(record, error);
          if (!waited) safely(record.options.onEnd || this.options.onEnd, { room: record.room, reason: error.code });
        },
      });
    }

    _subscribed(record, reply, withSince) {
      if (this._rooms.get(record.room) !== record) return;
      record.joined = true;
      record.previous = null;
      if (typeof reply.epoch === 'string') {
        record.position = { offset: reply.offset, epoch: reply.epoch };
      }
      if (withSince && reply.recovered === false) {
        this._gap(record, { room: record.room, reason: 'not_recovered', offset: reply.offset, epoch: reply.epoch });
      }
      safely(record.options.onSubscribed, reply);
      this._settleWaiters(record, null, reply);
    }

    _settleWaiters(record, error, reply) {
      const waiters = record.waiters;
      record.waiters = [];
      waiters.forEach((w) => (error ? w.reject(error) : w.resolve(reply)));
    }

    /** Sends `frame` with a fresh `ref`; `hooks.reply` or `hooks.error` gets the answer,
     * synchronously in the message handler (so a reply is handled before any frame
     * that follows it). */
    _send(frame, hooks) {
      const ref = 'c' + this._nextRef++;
      const socket = this._socket;
      if (!socket || socket.readyState !== 1) {
        hooks.error(new SwitchboardError('not_connected', 'not connected'));
        return;
      }
      const timer = setTimeout(() => {
        this._pending.delete(ref);
        hooks.error(new SwitchboardError('timeout', frame.op + ': no reply within ' + this.options.timeout + ' ms'));
      }, this.options.timeout);
      this._pending.set(ref, { hooks, timer });
      socket.send(JSON.stringify(Object.assign({}, frame, { ref })));
    }

    _request(frame) {
      return new Promise((resolve, reject) => this._send(frame, { reply: resolve, error: reject }));
    }

    _onMessage(socket, data) {
      if (socket !== this._socket) return;
      let frame;
      try {
        frame = JSON.parse(data);
      } catch (_) {
        return;
      }
      const pending = frame.ref != null && this._pending.get(String(frame.ref));
      if (pending) {
        this._pending.delete(String(frame.ref));
        clearTimeout(pending.timer);
        if (frame.op === 'error') pending.hooks.error(new SwitchboardError(frame.code, frame.message, frame));
        else pending.hooks.reply(frame);
        return;
      }
      switch (frame.op) {
        case 'event': return this._event(frame);
        case 'gap': return this._gapFrame(frame);
        case 'unsubscribed': return this._removed(frame);
        case 'join':
        case 'leave': {
          const record = this._rooms.get(frame.room);
          return record && safely(record.options.onPresence, frame);
        }
        case 'error':
          return safely(this.options.onError, new SwitchboardError(frame.code, frame.message, frame));
        default:
          return undefined;
      }
    }

    _event(frame) {
      const record = this._rooms.get(frame.room);
      if (!record) return;
      const event = frame.event || {};
      if (typeof event.offset === 'number' && typeof event.epoch === 'string') {
        const seen = record.position;
        if (seen && seen.epoch === event.epoch && event.offset <= seen.offset) {
          this.duplicatesDropped++;
          return;
        }
        record.position = { offset: event.offset, epoch: event.epoch };
      }
      safely(record.handler, event, frame.room);
    }

    _gapFrame(frame) {
      const record = this._rooms.get(frame.room);
      if (!record) return;
      if (typeof frame.epoch === 'string') record.position = { offset: frame.offset, epoch: frame.epoch };
      this._gap(record, { room: frame.room, reason: frame.reason, offset: frame.offset, epoch: frame.epoch });
    }

    _gap(record, gap) {
      safely(record.options.onGap || this.options.onGap, gap);
    }

    /** The server took the client out of a room (a fresh token that does not allow it). */
    _removed(frame) {
      const record = this._rooms.get(frame.room);
      if (!record) return;
      this._rooms.delete(frame.room);
      safely(record.options.onEnd || this.options.onEnd, { room: frame.room, reason: frame.reason || 'unsubscribed' });
    }

    _onClose(socket, code, reason) {
      if (socket !== this._socket) return;
      this._socket = null;
      this._clearTimers();
      this._lost(new SwitchboardError('connection_lost', 'the connection closed (' + code + ')'));
      if (this._closedByApp) return;
      if (code === CLOSE.POLICY) {
        // The token was refused or expired, or a limit was broken: the same token would
        // be refused again. Only a fresh one (from the app) may try again.
        this._token = null;
        this._tokenReason = 'refused';
        if (!this.options.getToken) {
          this._setState('closed', { code, reason });
          return;
        }
      }
      const delay = backoffDelay(this._attempt++, this.options.backoff);
      this._setState('waiting', { delay, code, reason, attempt: this._attempt });
      this._timers.retry = setTimeout(() => this._open(), delay);
    }

    /** Every request in flight fails; every room waits to be subscribed again. */
    _lost(error) {
      const pending = Array.from(this._pending.values());
      this._pending.clear();
      pending.forEach((p) => {
        clearTimeout(p.timer);
        p.hooks.error(error);
      });
    }

    _schedulePing() {
      const interval = this.options.pingInterval;
      if (!interval) return;
      this._timers.ping = setTimeout(() => {
        const socket = this._socket;
        this._send({ op: 'ping' }, {
          reply: () => this._schedulePing(),
          error: (error) => {
            if (error.code !== 'timeout' || socket !== this._socket) return;
            // No pong: the link is dead even if the browser has not noticed.
            socket.close(CLOSE.NO_PONG, 'no pong');
            this._onClose(socket, CLOSE.NO_PONG, 'no pong');
          },
        });
      }, interval);
    }

    _scheduleRenewal() {
      const expiry = this._token && tokenExpiry(this._token);
      if (!expiry) return;
      const left = expiry - Date.now();
      const at = Math.max(0, Math.min(left * (1 - this.options.renewShare), left - this.options.renewMargin));
      this._timers.renew = setTimeout(() => this._renew(), at);
    }

    async _renew() {
      let token = null;
      try {
        token = await this.options.getToken({ reason: 'expiring' });
      } catch (error) {
        safely(this.options.onError, error);
      }
      if (!token || this.state !== 'open') return;
      this._token = token;
      this._send({ op: 'auth', token }, {
        reply: () => this._scheduleRenewal(),
        error: (error) => safely(this.options.onError, error),
      });
    }

    _clearTimers() {
      Object.values(this._timers).forEach((t) => clearTimeout(t));
      this._timers = {};
    }
  }

  /** Creates a client and starts connecting. Options: `url` (default: this page's
   * server, `/ws`), `getToken`, `onState`, `onGap`, `onEnd`, `onError`, `backoff`
   * (`{min, max, factor, jitter}`), `timeout`, `pingInterval`. */
  function connect(options) {
    const client = new Client(options);
    client._open();
    return client;
  }

  return { connect, Client, SwitchboardError, backoffDelay, tokenExpiry, DEFAULT_BACKOFF, CLOSE };
});

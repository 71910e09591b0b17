// Test doubles for presence.js: a scriptable WebSocket, a manual clock, a page (window/document).

/** A WebSocket whose server side the test plays: open(), hello(), receive(), serverClose(). */
export class FakeWebSocket {
  /** @type {FakeWebSocket[]} */
  static instances = [];

  static reset() {
    FakeWebSocket.instances = [];
  }

  static get last() {
    return FakeWebSocket.instances.at(-1);
  }

  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeWebSocket.instances.push(this);
  }

  send(text) {
    if (this.readyState !== 1) throw new Error("InvalidStateError: not open");
    this.sent.push(JSON.parse(text));
  }

  /** The client closed it: the close event comes later, as in a browser. */
  close(code = 1000, reason = "") {
    this.closedWith = { code, reason };
    if (this.readyState >= 2) return;
    this.readyState = 2;
    queueMicrotask(() => this._fireClose(code, reason, true));
  }

  // ---- the server's side
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  hello(extra = {}) {
    if (this.readyState === 0) this.open();
    this.receive({
      type: "hello",
      session_id: `s${FakeWebSocket.instances.indexOf(this)}`,
      user: { id: 1, username: "alice" },
      heartbeat_interval: 25,
      presence_ttl: 60,
      protocol: 2,
      ...extra,
    });
  }

  /** The server closes (after an error frame, like the real one, when `error` is given). */
  serverClose(code, error) {
    if (error) this.receive({ type: "error", id: null, code: error.code, message: error.message });
    this._fireClose(code, "", code !== 1006);
  }

  /** Answer the latest request of `type` with a reply carrying `data`. */
  reply(type, data, { error } = {}) {
    const request = this.lastSent(type);
    if (!request) throw new Error(`no ${type} request sent; sent: ${JSON.stringify(this.sent)}`);
    if (error) this.receive({ type: "error", id: request.id, ...error });
    else this.receive({ type: type === "heartbeat" ? "heartbeat.ack" : "reply", id: request.id, data });
    return request;
  }

  lastSent(type) {
    return this.sent.filter((f) => f.type === type).at(-1);
  }

  sentTypes() {
    return this.sent.map((f) => f.type);
  }

  _fireClose(code, reason, wasClean) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason, wasClean });
  }
}

/** A manual clock: timers run only when the test advances time. */
export class FakeClock {
  constructor() {
    this.time = 0;
    this.timers = new Map();
    this.nextId = 1;
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.timers.set(id, { at: this.time + Math.max(0, ms || 0), fn, id });
      return id;
    };
    this.clearTimeout = (id) => {
      this.timers.delete(id);
    };
    this.now = () => this.time;
  }

  /** Delays of the timers still pending, soonest first. */
  pending() {
    return [...this.timers.values()].map((t) => t.at - this.time).sort((a, b) => a - b);
  }

  /** Advance time by `ms`, running due timers in order and settling promises between them. */
  async tick(ms) {
    const end = this.time + ms;
    for (;;) {
      await flush();
      const due = [...this.timers.values()]
        .filter((t) => t.at <= end)
        .sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!due) break;
      this.timers.delete(due.id);
      this.time = due.at;
      due.fn();
    }
    this.time = end;
    await flush();
  }
}

/** Let pending promise callbacks and microtasks run. */
export async function flush() {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** A page: window and document as event targets, with a settable visibility. */
export function fakePage() {
  const window = new EventTarget();
  const document = new EventTarget();
  document.visibilityState = "visible";
  const fire = (target, type, props = {}) => target.dispatchEvent(Object.assign(new Event(type), props));
  return {
    window,
    document,
    pagehide: (persisted = true) => fire(window, "pagehide", { persisted }),
    pageshow: (persisted = true) => fire(window, "pageshow", { persisted }),
    online: () => fire(window, "online"),
    freeze: () => fire(document, "freeze"),
    resume: () => fire(document, "resume"),
    hide: () => {
      document.visibilityState = "hidden";
      fire(document, "visibilitychange");
    },
    show: () => {
      document.visibilityState = "visible";
      fire(document, "visibilitychange");
    },
  };
}

/** A sequence of "random" numbers for jitter (repeats the last one). */
export function randoms(...values) {
  let i = 0;
  return () => values[Math.min(i++, values.length - 1)];
}

/** A client wired to the fakes; `random` defaults to 0.5 so delays are predictable. */
export async function makeClient(options = {}) {
  const { PresenceClient } = await import("../presence.js");
  FakeWebSocket.reset();
  const clock = new FakeClock();
  const page = fakePage();
  const client = new PresenceClient({
    url: "ws://test/ws/presence/",
    WebSocket: FakeWebSocket,
    clock,
    random: () => 0.5,
    window: page.window,
    document: page.document,
    ...options,
  });
  const events = [];
  for (const name of ["state", "open", "close", "unauthorized", "error", "join", "leave", "status", "gap"]) {
    client.on(name, (detail) => events.push([name, detail]));
  }
  return { client, clock, page, events, ws: () => FakeWebSocket.last };
}

/** Connect and answer hello and the global sync (empty unless `users` is given). */
export async function connected(options = {}, { users = [], seq = "100-0" } = {}) {
  const made = await makeClient(options);
  made.client.connect();
  await flush();
  made.ws().hello();
  if (made.client.options.global) made.ws().reply("presence.sync", { users, seq, count: users.length, complete: true });
  await flush();
  return made;
}

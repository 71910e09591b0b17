// The connection state machine: handshake, heartbeats, reconnect backoff, close codes, tokens.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { FakeWebSocket, connected, flush, makeClient, randoms } from "./fakes.js";

const states = (events) => events.filter(([n]) => n === "state").map(([, d]) => d.state);

describe("handshake", () => {
  it("offers presence.v2 and is open after hello", async () => {
    const { client, ws, events } = await makeClient();
    client.connect();
    await flush();

    assert.deepEqual(ws().protocols, ["presence.v2"]);
    assert.equal(ws().url, "ws://test/ws/presence/");
    assert.equal(client.state, "connecting");
    ws().open();
    assert.equal(client.state, "connecting"); // open needs hello, not just the socket
    ws().hello();
    assert.equal(client.state, "open");
    assert.equal(client.hello.session_id, "s0");
    assert.deepEqual(states(events), ["connecting", "open"]);
    assert.equal(events.find(([n]) => n === "open")[1].reconnected, false);
  });

  it("syncs the global scope after hello", async () => {
    const { client, ws } = await makeClient();
    client.connect();
    await flush();
    ws().hello();

    assert.deepEqual(ws().lastSent("presence.sync").data, { room: null });
    ws().reply("presence.sync", {
      users: [{ id: 1, username: "alice", status: "online", connections: 1 }],
      seq: "5-0",
      count: 1,
      complete: true,
    });
    await flush();
    assert.deepEqual([...client.members().keys()], [1]);
  });

  it("does not sync globally with global: false", async () => {
    const { client, ws } = await makeClient({ global: false });
    client.connect();
    await flush();
    ws().hello();
    assert.deepEqual(ws().sentTypes(), []);
  });

  it("connect() twice opens one socket", async () => {
    const { client } = await makeClient();
    client.connect();
    client.connect();
    await flush();
    assert.equal(FakeWebSocket.instances.length, 1);
  });
});

describe("heartbeats", () => {
  it("beats at the hello's interval, the first one jittered", async () => {
    const { clock, ws } = await connected({ random: randoms(0.2) }); // first beat at 0.2 × 25 s
    const beats = () => ws().sent.filter((f) => f.type === "heartbeat").length;

    await clock.tick(4999);
    assert.equal(beats(), 0);
    await clock.tick(1);
    assert.equal(beats(), 1);
    ws().reply("heartbeat");
    await clock.tick(25000);
    assert.equal(beats(), 2);
    assert.equal(ws().lastSent("heartbeat").data, undefined);
  });

  it("the first beat's delay depends on the random draw", async () => {
    const { clock, ws } = await connected({ random: randoms(0.9) });
    await clock.tick(22000);
    assert.equal(ws().sent.filter((f) => f.type === "heartbeat").length, 0);
    await clock.tick(500);
    assert.equal(ws().sent.filter((f) => f.type === "heartbeat").length, 1);
  });

  it("a heartbeat left unanswered for an interval drops the connection and reconnects", async () => {
    const { client, clock, ws } = await connected({ random: randoms(0, 0.5) });
    const first = ws();
    await clock.tick(0); // first beat at once (random 0)
    await clock.tick(25000); // no ack within the interval

    assert.equal(first.closedWith?.code, 4000);
    assert.equal(client.state, "waiting");
    assert.equal(client.lastClose.code, 1006);
  });
});

describe("reconnect backoff", () => {
  it("waits full-jitter delays that double up to a 30 s cap", async () => {
    const { client, clock } = await makeClient({ random: () => 0.999 });
    client.connect();
    await flush();
    const expected = [999, 1998, 3996, 7992, 15984, 29970, 29970];
    for (const delay of expected) {
      FakeWebSocket.last.serverClose(1006); // the handshake failed: server down
      assert.equal(client.state, "waiting");
      assert.ok(Math.abs(client.lastClose.delay - delay) < 1e-6, `${client.lastClose.delay} vs ${delay}`);
      const sockets = FakeWebSocket.instances.length;
      await clock.tick(delay - 1);
      assert.equal(FakeWebSocket.instances.length, sockets, "too early");
      await clock.tick(1);
      assert.equal(FakeWebSocket.instances.length, sockets + 1, "reconnected on time");
    }
  });

  it("delays are random draws within the window", async () => {
    const { client, clock } = await makeClient({ random: randoms(0.1, 0.7, 0.3) });
    client.connect();
    await flush();
    FakeWebSocket.last.serverClose(1006);
    await clock.tick(100);
    FakeWebSocket.last.serverClose(1006);
    await clock.tick(1400);
    FakeWebSocket.last.serverClose(1006);
    assert.deepEqual(client.delays.map(Math.round), [100, 1400, 1200]);
  });

  it("a hello resets the attempt count", async () => {
    const { client, clock, ws } = await makeClient({ random: () => 0.5 });
    client.connect();
    await flush();
    ws().serverClose(1006);
    await clock.tick(500);
    ws().serverClose(1006);
    await clock.tick(1000);
    ws().hello();
    ws().serverClose(1012);
    assert.equal(client.lastClose.delay, 500); // attempt 0 again, not 2000
  });

  it("reports reconnected: true on the second open, with a new socket", async () => {
    const { client, clock, ws, events } = await connected();
    ws().serverClose(1012);
    await clock.tick(500);
    ws().hello();
    const opens = events.filter(([n]) => n === "open").map(([, d]) => d.reconnected);
    assert.deepEqual(opens, [false, true]);
    assert.equal(FakeWebSocket.instances.length, 2);
    assert.equal(client.state, "open");
  });
});

describe("close codes", () => {
  for (const code of [4408, 1012, 1013, 1006]) {
    it(`${code}: reconnects with backoff`, async () => {
      const { client, clock } = await connected();
      FakeWebSocket.last.serverClose(code);
      assert.equal(client.state, "waiting");
      assert.equal(client.lastClose.decision, "reconnect");
      await clock.tick(client.lastClose.delay);
      assert.equal(FakeWebSocket.instances.length, 2);
    });
  }

  it("4401: onUnauthorized, the error frame's message, and no reconnect", async () => {
    const seen = [];
    const { client, clock, events } = await connected({ onUnauthorized: (info) => seen.push(info) });
    FakeWebSocket.last.serverClose(4401, { code: "unauthorized", message: "authentication required" });

    assert.equal(client.state, "closed");
    assert.equal(seen.length, 1);
    assert.equal(seen[0].error.message, "authentication required");
    assert.equal(events.filter(([n]) => n === "unauthorized").length, 1);
    await clock.tick(10 * 60 * 1000);
    assert.equal(FakeWebSocket.instances.length, 1);
    assert.deepEqual(clock.pending(), []);
  });

  for (const [code, error] of [
    [4403, { code: "forbidden", message: "this account is disabled" }],
    [4410, { code: "terminated", message: "session terminated by an operator" }],
  ]) {
    it(`${code}: reports the server's reason and stops`, async () => {
      const { client, clock, events } = await connected();
      FakeWebSocket.last.serverClose(code, error);

      assert.equal(client.state, "closed");
      const close = events.filter(([n]) => n === "close").at(-1)[1];
      assert.equal(close.code, code);
      assert.equal(close.reason, error.message);
      assert.deepEqual(close.error, error);
      assert.equal(close.delay, null);
      assert.equal(events.filter(([n]) => n === "unauthorized").length, 0);
      await clock.tick(10 * 60 * 1000);
      assert.equal(FakeWebSocket.instances.length, 1);
    });
  }

  it("4429: a long back-off before coming back", async () => {
    const { client, clock } = await connected({ random: () => 0.5 });
    FakeWebSocket.last.serverClose(4429, { code: "flooding", message: "too many frames; slow down" });

    assert.equal(client.state, "waiting");
    assert.equal(client.lastClose.delay, 60500);
    await clock.tick(60000);
    assert.equal(FakeWebSocket.instances.length, 1);
    await clock.tick(500);
    assert.equal(FakeWebSocket.instances.length, 2);
  });

  it("4429 with retry_after: waits what the server asks, plus jitter", async () => {
    const { client, clock, ws } = await connected({ random: () => 0.5 });
    ws().receive({ type: "error", id: null, code: "connect_rate_limited", message: "slow down", retry_after: 7 });
    ws().serverClose(4429);

    assert.equal(client.lastClose.delay, 7500);
    assert.equal(client.lastClose.error.retry_after, 7);
    await clock.tick(7499);
    assert.equal(FakeWebSocket.instances.length, 1);
    await clock.tick(1);
    assert.equal(FakeWebSocket.instances.length, 2);
  });

  it("connect() after a stop starts again", async () => {
    const { client, ws } = await connected();
    ws().serverClose(4410, { code: "terminated", message: "bye" });
    client.connect();
    await flush();
    assert.equal(FakeWebSocket.instances.length, 2);
    assert.equal(client.state, "connecting");
  });

  it("disconnect() closes with 1000 and never reconnects", async () => {
    const { client, clock, ws } = await connected();
    const socket = ws();
    client.disconnect();
    await flush();

    assert.deepEqual(socket.closedWith, { code: 1000, reason: "disconnect()" });
    assert.equal(client.state, "closed");
    await clock.tick(120000);
    assert.equal(FakeWebSocket.instances.length, 1);
  });

  it("disconnect() during the back-off cancels the reconnect", async () => {
    const { client, clock, ws } = await connected();
    ws().serverClose(1006);
    client.disconnect();
    await clock.tick(60000);
    assert.equal(FakeWebSocket.instances.length, 1);
    assert.equal(client.state, "closed");
  });
});

describe("tokens", () => {
  const tokenFetch = (tokens, log = []) => async (url, init) => {
    log.push({ url, init });
    const token = tokens.shift();
    if (token === 401) return { ok: false, status: 401, json: async () => ({}) };
    return { ok: true, status: 200, json: async () => ({ token, expires_in: 60 }) };
  };

  it("sends a fresh token per attempt in the subprotocol by default", async () => {
    const log = [];
    const { client, clock } = await makeClient({
      token: true,
      fetch: tokenFetch(["t1.a-b_c", "t2"], log),
      csrfToken: "csrf1",
    });
    client.connect();
    await flush();
    assert.deepEqual(FakeWebSocket.last.protocols, ["presence.v2", "presence.token.t1.a-b_c"]);
    assert.equal(FakeWebSocket.last.url, "ws://test/ws/presence/");
    assert.equal(log[0].url, "/api/presence/token/");
    assert.equal(log[0].init.method, "POST");
    assert.equal(log[0].init.headers["X-CSRFToken"], "csrf1");

    FakeWebSocket.last.serverClose(1006);
    await clock.tick(client.lastClose.delay);
    await flush();
    assert.deepEqual(FakeWebSocket.last.protocols, ["presence.v2", "presence.token.t2"]);
    assert.equal(log.length, 2);
  });

  it("can put the token in the query string instead", async () => {
    const { client } = await makeClient({ token: true, tokenIn: "query", fetch: tokenFetch(["t 1"]) });
    client.connect();
    await flush();
    assert.equal(FakeWebSocket.last.url, "ws://test/ws/presence/?token=t%201");
    assert.deepEqual(FakeWebSocket.last.protocols, ["presence.v2"]);
  });

  it("a token that is not subprotocol-safe goes in the query string", async () => {
    const { client } = await makeClient({ token: true, fetch: tokenFetch(["u1:sig:x"]) });
    client.connect();
    await flush();
    assert.equal(FakeWebSocket.last.url, "ws://test/ws/presence/?token=u1%3Asig%3Ax");
    assert.deepEqual(FakeWebSocket.last.protocols, ["presence.v2"]);
  });

  it("a WebSocket constructor that throws is a failed attempt, retried", async () => {
    let calls = 0;
    class Throwing extends FakeWebSocket {
      constructor(url, protocols) {
        calls += 1;
        if (calls === 1) throw new SyntaxError("bad subprotocol");
        super(url, protocols);
      }
    }
    const { client, clock } = await makeClient({ WebSocket: Throwing });
    client.connect();
    await flush();
    assert.equal(client.state, "waiting");
    assert.match(client.lastClose.reason, /bad subprotocol/);
    await clock.tick(client.lastClose.delay);
    assert.equal(client.state, "connecting");
    assert.equal(FakeWebSocket.instances.length, 1);
  });

  it("a refused token request (logged out) is unauthorized", async () => {
    const seen = [];
    const { client } = await makeClient({
      token: true,
      fetch: tokenFetch([401]),
      onUnauthorized: (info) => seen.push(info),
    });
    client.connect();
    await flush();
    assert.equal(FakeWebSocket.instances.length, 0);
    assert.equal(client.state, "closed");
    assert.equal(seen[0].code, 4401);
  });

  it("a token request that fails on the network is retried with backoff", async () => {
    let calls = 0;
    const { client, clock } = await makeClient({
      token: true,
      fetch: async () => {
        calls += 1;
        if (calls === 1) throw new TypeError("Failed to fetch");
        return { ok: true, status: 200, json: async () => ({ token: "t2" }) };
      },
    });
    client.connect();
    await flush();
    assert.equal(client.state, "waiting");
    await clock.tick(client.lastClose.delay);
    await flush();
    assert.deepEqual(FakeWebSocket.last.protocols, ["presence.v2", "presence.token.t2"]);
  });

  it("a token function is called for every attempt", async () => {
    let n = 0;
    const { client, clock } = await makeClient({ token: () => `fn${++n}` });
    client.connect();
    await flush();
    FakeWebSocket.last.serverClose(1013);
    await clock.tick(client.lastClose.delay);
    await flush();
    assert.deepEqual(
      FakeWebSocket.instances.map((w) => w.protocols[1]),
      ["presence.token.fn1", "presence.token.fn2"],
    );
  });
});

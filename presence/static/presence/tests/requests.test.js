// send(): replies, errors, timeouts, closes; status; the throttled typing signal; app frames.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { connected, flush, makeClient } from "./fakes.js";

describe("send()", () => {
  it("resolves with the data of the reply carrying its id", async () => {
    const { client, ws } = await connected();
    const answer = client.send("presence.list", { room: "lobby" });
    const frame = ws().lastSent("presence.list");
    assert.deepEqual(frame.data, { room: "lobby" });
    ws().receive({ type: "reply", id: frame.id + 1000, data: { wrong: true } }); // not ours
    ws().receive({ type: "reply", id: frame.id, data: { count: 0, users: [] } });
    assert.deepEqual(await answer, { count: 0, users: [] });
  });

  it("ids are unique, so concurrent requests are told apart", async () => {
    const { client, ws } = await connected();
    const a = client.send("x.a", {});
    const b = client.send("x.b", {});
    const [fa, fb] = [ws().lastSent("x.a"), ws().lastSent("x.b")];
    assert.notEqual(fa.id, fb.id);
    ws().receive({ type: "reply", id: fb.id, data: "B" });
    ws().receive({ type: "reply", id: fa.id, data: "A" });
    assert.deepEqual(await Promise.all([a, b]), ["A", "B"]);
  });

  it("rejects with the error frame's code and message", async () => {
    const { client, ws } = await connected();
    const answer = client.send("nope", {});
    ws().reply("nope", null, { error: { code: "unknown_type", message: "no handler for nope" } });
    await assert.rejects(answer, { name: "PresenceError", code: "unknown_type", message: "no handler for nope" });
  });

  it("rejects on timeout", async () => {
    const { client, clock } = await connected({ requestTimeout: 2000 });
    const answer = client.send("slow", {});
    let settled = false;
    answer.catch(() => {
      settled = true;
    });
    await clock.tick(1999);
    assert.equal(settled, false);
    await clock.tick(1);
    await assert.rejects(answer, { code: "timeout" });
  });

  it("a per-call timeout wins", async () => {
    const { client, clock } = await connected();
    const rejected = assert.rejects(client.send("slow", {}, { timeout: 50 }), { code: "timeout" });
    await clock.tick(50);
    await rejected;
  });

  it("rejects pending requests when the connection closes", async () => {
    const { client, ws } = await connected();
    const answer = client.send("x", {});
    ws().serverClose(1006);
    await assert.rejects(answer, { code: "disconnected" });
  });

  it("rejects at once when not connected", async () => {
    const { client } = await makeClient();
    await assert.rejects(client.send("x", {}), { code: "not_connected" });
  });

  it("a late reply after a timeout is dropped", async () => {
    const { client, ws, clock, events } = await connected();
    const rejected = assert.rejects(client.send("x", {}, { timeout: 10 }), { code: "timeout" });
    const id = ws().lastSent("x").id;
    await clock.tick(10);
    await rejected;
    ws().receive({ type: "reply", id, data: {} }); // nothing to resolve, nothing thrown
    assert.equal(events.filter(([n]) => n === "error").length, 0);
  });
});

describe("server frames", () => {
  it("application frames are events by type, and 'message'", async () => {
    const { client, ws } = await connected();
    const typed = [];
    const all = [];
    client.on("chat.typing", (f) => typed.push(f));
    client.on("message", (f) => all.push(f.type));
    ws().receive({ type: "chat.typing", room: "lobby", user: { id: 2, username: "bob" }, typing: true });
    assert.equal(typed[0].user.username, "bob");
    assert.deepEqual(all, ["chat.typing"]);
  });

  it("an error frame without an id is an 'error' event", async () => {
    const { ws, events } = await connected();
    ws().receive({ type: "error", id: null, code: "rate_limited", message: "slow down" });
    assert.deepEqual(events.filter(([n]) => n === "error").map(([, d]) => d.code), ["rate_limited"]);
  });

  it("a throwing listener does not break the client", async () => {
    const reported = [];
    const { client, ws } = await connected({ reportError: (err) => reported.push(err.message) });
    const after = [];
    client.on("chat.typing", () => {
      throw new Error("listener bug");
    });
    client.on("chat.typing", () => after.push("next listener ran"));
    ws().receive({ type: "chat.typing", room: "lobby", user: { id: 2, username: "bob" }, typing: true });
    assert.deepEqual(reported, ["listener bug"]);
    assert.deepEqual(after, ["next listener ran"]);
    const answer = client.send("x", {});
    ws().reply("x", { ok: 1 });
    assert.deepEqual(await answer, { ok: 1 });
  });
});

describe("setStatus()", () => {
  it("sends status.set and resolves on the reply", async () => {
    const { client, ws } = await connected();
    const set = client.setStatus("away");
    assert.deepEqual(ws().lastSent("status.set").data, { status: "away" });
    ws().reply("status.set", { status: "away" });
    await set;
    assert.equal(client.ownStatus, "away");
  });

  it("refuses an unknown status", async () => {
    const { client } = await connected();
    await assert.rejects(client.setStatus("gone"), { code: "invalid_payload" });
  });
});

describe("typing signal", () => {
  async function typing(options) {
    const made = await connected();
    made.ws().sent.length = 0;
    return { ...made, signal: made.client.typing("lobby", options) };
  }
  const typingFrames = (ws) => ws.sent.filter((f) => f.type === "chat.typing").map((f) => f.data.typing);

  it("sends typing: true at most once per interval", async () => {
    const { signal, ws, clock } = await typing({ interval: 3000, idle: 10000 });
    for (let i = 0; i <= 30; i++) {
      signal.keystroke(); // a keystroke every 100 ms from 0 to 3000
      if (i < 30) await clock.tick(100);
    }
    assert.deepEqual(typingFrames(ws()), [true, true]); // at 0 and at 3000
    assert.deepEqual(ws().lastSent("chat.typing").data, { room: "lobby", typing: true });
  });

  it("sends typing: false after the idle time, once", async () => {
    const { signal, ws, clock } = await typing({ interval: 3000, idle: 4000 });
    signal.keystroke();
    await clock.tick(3999);
    assert.deepEqual(typingFrames(ws()), [true]);
    await clock.tick(1);
    assert.deepEqual(typingFrames(ws()), [true, false]);
    await clock.tick(10000); // (no later than the unanswered heartbeat at 12.5 s drops the socket)
    assert.deepEqual(typingFrames(ws()), [true, false]);
    assert.equal(signal.active, false);
  });

  it("stop() tells the room at once, and only if it was told", async () => {
    const { signal, ws } = await typing();
    signal.stop();
    assert.deepEqual(typingFrames(ws()), []);
    signal.keystroke();
    signal.stop();
    signal.keystroke(); // typing again right after a stop is news
    assert.deepEqual(typingFrames(ws()), [true, false, true]);
  });

  it("a signal lost while disconnected is not an error", async () => {
    const { client } = await makeClient();
    const signal = client.typing("lobby");
    signal.keystroke();
    signal.stop();
    await flush();
  });

  it("another message type can be used", async () => {
    const { signal, ws } = await typing({ type: "doc.editing" });
    signal.keystroke();
    assert.deepEqual(ws().lastSent("doc.editing").data, { room: "lobby", typing: true });
  });
});

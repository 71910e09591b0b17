// Watching users, the bulk status request, activity frames and lastActive.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { connected, flush, makeClient } from "./fakes.js";

const bob = { id: 9, username: "bob", online: true, status: "away", last_seen: null, last_active: 1000 };
const erin = { id: 12, username: "erin", online: false, status: "offline", last_seen: "x", last_active: null };

describe("watch()", () => {
  it("returns a live Map filled by the reply and updated by watch frames", async () => {
    const { client, ws } = await connected();
    const changes = [];
    client.on("watch", (d) => changes.push([d.event, d.user?.id]));

    const watched = client.watch([9, 12, 9]);
    assert.deepEqual(ws().lastSent("presence.watch").data, { users: [9, 12] });
    assert.equal(watched.size, 0);
    ws().reply("presence.watch", { users: [bob, erin] });
    await flush();
    assert.deepEqual([...watched.keys()], [9, 12]);
    assert.equal(watched.get(9).status, "away");

    ws().receive({ type: "presence.watch", event: "offline", user: { id: 9, username: "bob", online: false, status: "offline", last_seen: "t" } });
    ws().receive({ type: "presence.watch", event: "online", user: { id: 12, username: "erin", online: true, status: "online", last_seen: null, last_active: 2000 } });
    ws().receive({ type: "presence.watch", event: "online", user: { id: 77, username: "x", online: true } }); // not watched

    assert.equal(watched.get(9).online, false);
    assert.equal(watched.get(9).last_active, 1000); // a field the frame left out is kept
    assert.equal(watched.get(12).online, true);
    assert.equal(watched.has(77), false);
    assert.deepEqual(changes, [["snapshot", undefined], ["offline", 9], ["online", 12]]);
    assert.equal(client.watched, watched);
  });

  it("a new list replaces the old one; [] clears", async () => {
    const { client, ws } = await connected();
    const watched = client.watch([9, 12]);
    ws().reply("presence.watch", { users: [bob, erin] });
    await flush();

    client.watch([12]);
    assert.deepEqual([...watched.keys()], [12]);
    client.watch([]);
    assert.deepEqual(ws().lastSent("presence.watch").data, { users: [] });
    assert.equal(watched.size, 0);
  });

  it("is sent once connected, and again after a reconnect", async () => {
    const { client, ws, clock } = await makeClient({ global: false });
    client.watch([9]);
    client.connect();
    await flush();
    ws().hello();
    await flush();
    assert.deepEqual(ws().lastSent("presence.watch").data, { users: [9] });

    ws().serverClose(1006);
    await clock.tick(60000);
    ws().hello();
    await flush();
    assert.deepEqual(ws().lastSent("presence.watch").data, { users: [9] });
  });

  it("a refusal is an error event", async () => {
    const { client, ws, events } = await connected();
    client.watch([9]);
    ws().reply("presence.watch", null, { error: { code: "too_many_watched", message: "at most 200" } });
    await flush();
    assert.deepEqual(events.filter(([n]) => n === "error").map(([, d]) => d.code), ["too_many_watched"]);
  });
});

describe("lastActive()", () => {
  it("knows what replies, frames and status() said, never moving back", async () => {
    const { client, ws } = await connected();
    assert.equal(client.lastActive(9), null);
    client.watch([9]);
    ws().reply("presence.watch", { users: [bob] });
    await flush();
    assert.equal(client.lastActive(9), 1000);
    ws().receive({ type: "presence.watch", event: "online", user: { id: 9, online: true, last_active: 900 } });
    assert.equal(client.lastActive(9), 1000);
  });
});

describe("status()", () => {
  it("POSTs the ids with the CSRF token and resolves with the users", async () => {
    const calls = [];
    const fetch = async (url, init) => {
      calls.push([url, init]);
      return { ok: true, status: 200, json: async () => ({ users: [{ id: 5, online: false, last_active: 42 }] }) };
    };
    const { client } = await makeClient({ fetch, csrfToken: "tok" });

    const users = await client.status([5]);

    assert.deepEqual(users, [{ id: 5, online: false, last_active: 42 }]);
    assert.equal(calls[0][0], "/api/presence/status/");
    assert.equal(calls[0][1].method, "POST");
    assert.equal(calls[0][1].headers["X-CSRFToken"], "tok");
    assert.deepEqual(JSON.parse(calls[0][1].body), { users: [5] });
    assert.equal(client.lastActive(5), 42);
  });

  it("rejects with the answer's code", async () => {
    const fetch = async () => ({ ok: false, status: 400, json: async () => ({ code: "invalid_payload", error: "bad" }) });
    const { client } = await makeClient({ fetch });
    await assert.rejects(client.status([0]), { name: "PresenceError", code: "invalid_payload" });
  });
});

describe("activity", () => {
  it("user input sends an activity frame without an id, throttled", async () => {
    const { client, ws, page, clock } = await connected({ activityInterval: 30000 });
    const activity = () => ws().sent.filter((f) => f.type === "activity");

    page.window.dispatchEvent(new Event("keydown"));
    page.window.dispatchEvent(new Event("pointerdown"));
    assert.deepEqual(activity(), [{ type: "activity" }]);
    await clock.tick(30000);
    page.window.dispatchEvent(new Event("wheel"));
    assert.equal(activity().length, 2);
    assert.equal(client.activity(), false); // throttled
  });

  it("is off with activity: false", async () => {
    const { ws, page } = await connected({ activity: false });
    page.window.dispatchEvent(new Event("keydown"));
    assert.equal(ws().sent.filter((f) => f.type === "activity").length, 0);
  });
});

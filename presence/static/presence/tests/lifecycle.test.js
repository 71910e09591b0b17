// The page lifecycle: no back/forward-cache ghosts, reconnect on return, away while hidden.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { FakeWebSocket, connected, flush } from "./fakes.js";

const statusFrames = (ws) => ws.sent.filter((f) => f.type === "status.set").map((f) => f.data.status);

describe("pagehide / pageshow", () => {
  it("pagehide closes the socket with 1000 and schedules nothing", async () => {
    const { client, page, clock, ws } = await connected();
    const socket = ws();
    page.pagehide(true);
    await flush();

    assert.deepEqual(socket.closedWith, { code: 1000, reason: "page hidden" });
    assert.equal(client.state, "suspended");
    await clock.tick(120000);
    assert.equal(FakeWebSocket.instances.length, 1);
  });

  it("pageshow from the back/forward cache reconnects and rejoins", async () => {
    const { client, page, ws } = await connected();
    client.join("lobby");
    ws().reply("room.join", { users: [], seq: "1-0", count: 0, complete: true });
    page.pagehide(true);
    page.pageshow(true);
    await flush();
    assert.equal(FakeWebSocket.instances.length, 2);
    ws().hello();
    assert.deepEqual(ws().lastSent("room.join").data, { room: "lobby" });
    assert.equal(client.state, "open");
  });

  it("the first pageshow of a page load does not open a second socket", async () => {
    const { page } = await connected();
    page.pageshow(false);
    await flush();
    assert.equal(FakeWebSocket.instances.length, 1);
  });

  it("freeze closes, resume reconnects", async () => {
    const { client, page, ws } = await connected();
    const socket = ws();
    page.freeze();
    assert.equal(socket.closedWith.code, 1000);
    assert.equal(client.state, "suspended");
    page.resume();
    await flush();
    assert.equal(FakeWebSocket.instances.length, 2);
  });

  it("pagehide during the reconnect back-off cancels it", async () => {
    const { client, page, clock, ws } = await connected();
    ws().serverClose(1006);
    page.pagehide(true);
    await clock.tick(120000);
    assert.equal(FakeWebSocket.instances.length, 1);
    assert.equal(client.state, "suspended");
  });

  it("a stopped client stays stopped through pageshow", async () => {
    const { client, page, ws } = await connected();
    ws().serverClose(4410, { code: "terminated", message: "kicked" });
    page.pagehide(true);
    page.pageshow(true);
    await flush();
    assert.equal(client.state, "closed");
    assert.equal(FakeWebSocket.instances.length, 1);
  });

  it("the network coming back cuts a back-off short", async () => {
    const { client, page, ws } = await connected({ random: () => 0.99 });
    ws().serverClose(1006);
    assert.equal(client.state, "waiting");
    page.online();
    await flush();
    assert.equal(FakeWebSocket.instances.length, 2);
    assert.equal(client.state, "connecting");
  });

  it("the network event does nothing to an open or stopped client", async () => {
    const { client, page, ws } = await connected();
    page.online();
    ws().serverClose(4410, { code: "terminated", message: "kicked" });
    page.online();
    await flush();
    assert.equal(FakeWebSocket.instances.length, 1);
    assert.equal(client.state, "closed");
  });

  it("lifecycle: false leaves the socket alone", async () => {
    const { client, page, ws } = await connected({ lifecycle: false });
    page.pagehide(true);
    assert.equal(ws().closedWith, null);
    assert.equal(client.state, "open");
  });
});

describe("hidden → away, visible → online", () => {
  it("turns away after awayAfter hidden, back to online when visible", async () => {
    const { client, page, clock, ws } = await connected({ awayAfter: 30000 });
    page.hide();
    await clock.tick(29999);
    assert.deepEqual(statusFrames(ws()), []);
    await clock.tick(1);
    assert.deepEqual(statusFrames(ws()), ["away"]);
    assert.equal(client.ownStatus, "away");
    page.show();
    assert.deepEqual(statusFrames(ws()), ["away", "online"]);
    assert.equal(client.ownStatus, "online");
  });

  it("a short glance away changes nothing", async () => {
    const { page, clock, ws } = await connected({ awayAfter: 30000 });
    page.hide();
    await clock.tick(10000);
    page.show();
    await clock.tick(60000);
    assert.deepEqual(statusFrames(ws()), []);
  });

  it("a chosen busy is not overridden", async () => {
    const { client, page, clock, ws } = await connected({ awayAfter: 1000 });
    client.setStatus("busy");
    page.hide();
    await clock.tick(5000);
    page.show();
    assert.deepEqual(statusFrames(ws()), ["busy"]);
  });

  it("an away while disconnected is sent after the reconnect, online after showing", async () => {
    const { client, page, clock, ws } = await connected({ awayAfter: 1000 });
    ws().serverClose(1006);
    page.hide();
    await clock.tick(1000);
    await clock.tick(client.lastClose.delay);
    ws().hello();
    assert.deepEqual(statusFrames(ws()), ["away"]);
    page.show();
    assert.deepEqual(statusFrames(ws()), ["away", "online"]);
  });

  it("awayAfter: null never turns away", async () => {
    const { page, clock, ws } = await connected({ awayAfter: null });
    page.hide();
    await clock.tick(3600000);
    assert.deepEqual(statusFrames(ws()), []);
  });
});

// Live refresh of the presence dashboard by short polling its staff-only JSON feed.
// Plain ES, no build step. The server renders every fragment (the same templates as the
// page), so this only swaps HTML in: numbers and tasks on each poll, charts every
// `data-charts-every` polls (they change once a minute at most).
(function () {
  "use strict";
  const root = document.getElementById("console-dashboard");
  if (!root) {
    return;
  }
  const feed = root.dataset.feed;
  const interval = Number(root.dataset.interval) || 5000;
  const chartsEvery = Number(root.dataset.chartsEvery) || 12;
  const updated = document.getElementById("console-updated");
  let polls = 0;

  /** @param {Record<string, string>} fragments */
  function apply(fragments) {
    for (const [name, html] of Object.entries(fragments)) {
      const target = root.querySelector(`[data-fragment="${name}"]`);
      if (target) {
        target.innerHTML = html;
      }
    }
  }

  async function refresh() {
    polls += 1;
    const url = polls % chartsEvery === 0 ? `${feed}?charts=1` : feed;
    try {
      const response = await fetch(url, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      if (!response.ok || !response.headers.get("Content-Type")?.includes("json")) {
        throw new Error(`HTTP ${response.status}`);
      }
      const data = await response.json();
      apply(data.fragments);
      root.dataset.polls = String(polls);
      if (updated) {
        updated.textContent = `Updated ${data.at.replace("T", " ").replace("+00:00", "")} UTC`;
      }
    } catch (error) {
      // Logged out, server restarting: say so and keep trying.
      if (updated) {
        updated.textContent = `Update failed (${error.message}); retrying`;
      }
    } finally {
      window.setTimeout(refresh, interval);
    }
  }

  window.setTimeout(refresh, interval);
})();

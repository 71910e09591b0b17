// The process page (presence/templates/admin/presence/process.html): while a profile runs, reload
// the page once it is due, so the finished call tree shows up without a click.
// A static file (no inline script) so the page works under a Content-Security-Policy.
(function () {
  "use strict";
  const running = document.getElementById("profile-running");
  if (!running) {
    return;
  }
  const until = Number(running.dataset.until) * 1000;
  // A little after the end: the process stores the profile once the sampler returns.
  const wait = Math.max(500, until - Date.now() + 750);
  window.setTimeout(() => window.location.reload(), wait);
})();

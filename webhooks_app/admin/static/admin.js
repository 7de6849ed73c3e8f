// Live updates and confirmations for the admin page. Loaded as a file (the CSP forbids inline
// script). Fragments come from the server already rendered and escaped; payload text is never
// turned into markup here.
"use strict";

(function () {
  const POLL_MS = 3000;

  function confirmations() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) {
          event.preventDefault();
        }
      });
    });
  }

  function poll() {
    const region = document.getElementById("live-region");
    if (!region || !region.dataset.liveUrl) {
      return;
    }
    let busy = false;
    window.setInterval(function () {
      if (busy || document.hidden) {
        return;
      }
      busy = true;
      const current = document.getElementById("live-region");
      fetch(current.dataset.liveUrl, {
        credentials: "same-origin",
        headers: { "X-Admin-Poll": "1" },
        cache: "no-store",
      })
        .then(function (response) {
          if (response.status === 401) {
            window.location.reload();  // the session ended: the page sends us to the login
            return null;
          }
          return response.ok ? response.text() : null;
        })
        .then(function (html) {
          if (!html) {
            return;
          }
          const parsed = new DOMParser().parseFromString(html, "text/html");
          const fresh = parsed.getElementById("live-region");
          if (fresh && fresh.outerHTML !== current.outerHTML) {
            current.replaceWith(document.importNode(fresh, true));
          }
        })
        .catch(function () { /* offline for a moment: try again on the next tick */ })
        .finally(function () { busy = false; });
    }, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", function () {
    confirmations();
    poll();
  });
})();

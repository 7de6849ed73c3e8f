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

  // Relative times, as the server renders them (presenting.relative), kept current here so a
  // live fragment differs from the shown one only when something really changed.
  function relative(iso, now) {
    let seconds = (now - Date.parse(iso)) / 1000;
    const ahead = seconds < 0;
    seconds = Math.abs(seconds);
    if (seconds < 1) {
      return "just now";
    }
    const units = [[86400, "d"], [3600, "h"], [60, "min"], [1, "s"]];
    for (const [size, unit] of units) {
      if (seconds >= size) {
        const amount = Math.floor(seconds / size) + " " + unit;
        return ahead ? "in " + amount : amount + " ago";
      }
    }
    return "just now";
  }

  function refreshTimes(root) {
    const now = Date.now();
    root.querySelectorAll("time[datetime]").forEach(function (node) {
      const text = relative(node.getAttribute("datetime"), now);
      if (node.textContent !== text) {
        node.textContent = text;
      }
    });
  }

  // "/" focuses the search box, as on most sites; not while typing somewhere else.
  function searchShortcut() {
    const search = document.getElementById("search");
    if (!search) {
      return;
    }
    document.addEventListener("keydown", function (event) {
      const target = event.target;
      const typing = target instanceof HTMLElement &&
        (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
      if (event.key !== "/" || typing || event.ctrlKey || event.metaKey || event.altKey) {
        return;
      }
      event.preventDefault();
      search.focus();
      search.select();
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
          if (!fresh) {
            return;
          }
          refreshTimes(fresh);
          refreshTimes(current);
          // Tracebacks the reader opened stay open.
          current.querySelectorAll("details[id][open]").forEach(function (open) {
            const again = fresh.querySelector("#" + CSS.escape(open.id));
            if (again) {
              again.open = true;
            }
          });
          if (fresh.outerHTML !== current.outerHTML) {
            current.replaceWith(document.importNode(fresh, true));
          }
        })
        .catch(function () { /* offline for a moment: try again on the next tick */ })
        .finally(function () { busy = false; });
    }, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", function () {
    confirmations();
    searchShortcut();
    refreshTimes(document);
    window.setInterval(function () { refreshTimes(document); }, 1000);
    poll();
  });
})();

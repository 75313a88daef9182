// Rananeeti Café: small enhancements. Every page works without this file.
(function () {
  "use strict";

  var POLL_INTERVAL_MS = 1000;
  var POLL_FAILURES_MAX = 5; // then fall back to reloading the page, which always works

  // A write form's idempotency key names one submission: sent twice (a double click, a resend
  // after a network error) it is one write; changed, it is a new one and gets a new key.
  function renewKeyOnChange(form) {
    var key = form.querySelector('input[name="idempotency_key"]');
    if (!key || !window.crypto || !window.crypto.getRandomValues) return;
    var renew = function () {
      var bytes = new Uint8Array(16);
      window.crypto.getRandomValues(bytes);
      var fresh = Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
      var dash = key.value.indexOf("-");
      key.value = dash < 0 ? fresh : fresh + key.value.slice(dash);
    };
    form.addEventListener("input", renew);
    form.addEventListener("change", renew);
  }

  // Booking form: say how many characters are left, and do not let a double click send twice.
  function enhanceForm(form) {
    renewKeyOnChange(form);
    var notes = form.querySelector("#notes");
    var left = document.querySelector('[data-chars-left-for="notes"]');
    if (notes && left) {
      var max = parseInt(notes.getAttribute("maxlength"), 10);
      var update = function () {
        left.textContent = String(Math.max(0, max - notes.value.length));
      };
      notes.addEventListener("input", update);
      update();
    }
    form.addEventListener("submit", function () {
      var button = form.querySelector("button[type=submit]");
      if (button && !button.disabled) {
        // Disabled after this tick so the browser still sends the form.
        window.setTimeout(function () {
          button.disabled = true;
          button.textContent = button.getAttribute("data-busy-label") || button.textContent;
        }, 0);
      }
    });
    var summary = document.getElementById("error-summary");
    if (summary) summary.focus();
  }

  // Status page: while the booking is pending, ask the API every second; when it is confirmed
  // or rejected, swap in the freshly rendered page content.
  function followReservation(article) {
    var url = article.getAttribute("data-poll-url");
    var failures = 0;

    function setBadge(status, reason) {
      var badge = article.querySelector("[data-status]");
      if (!badge) return;
      var labels = { committed: "Confirmed", pending: "Queued — pending", rejected: "Rejected" };
      badge.setAttribute("data-status", status);
      badge.className = "badge badge--" + status;
      badge.textContent = status === "rejected" && reason ? "Rejected: " + reason : labels[status] || status;
    }

    function replaceContent() {
      return fetch(window.location.href, { headers: { Accept: "text/html" }, credentials: "same-origin" })
        .then(function (response) {
          if (!response.ok) throw new Error("status page answered " + response.status);
          return response.text();
        })
        .then(function (html) {
          var fresh = new DOMParser().parseFromString(html, "text/html");
          var main = document.getElementById("main");
          var freshMain = fresh.getElementById("main");
          if (main && freshMain) {
            main.innerHTML = freshMain.innerHTML;
            document.title = fresh.title;
          }
        });
    }

    function poll() {
      fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (!response.ok) throw new Error("status answered " + response.status);
          return response.json();
        })
        .then(function (reservation) {
          failures = 0;
          if (reservation.status === "pending") {
            window.setTimeout(poll, POLL_INTERVAL_MS);
            return;
          }
          // Badge and note change together, so the page never says both "confirmed" and
          // "queued"; then the freshly rendered content replaces them.
          setBadge(reservation.status, reservation.reason);
          var note = document.getElementById("pending-note");
          if (note) note.remove();
          return replaceContent().catch(function () {});
        })
        .catch(function () {
          failures += 1;
          if (failures >= POLL_FAILURES_MAX) {
            window.location.reload();
          } else {
            window.setTimeout(poll, POLL_INTERVAL_MS * 2);
          }
        });
    }

    window.setTimeout(poll, POLL_INTERVAL_MS);
  }

  function start() {
    var form = document.getElementById("reservation-form");
    if (form) enhanceForm(form);
    var article = document.querySelector("[data-poll-url]");
    if (article && window.fetch && window.DOMParser) {
      followReservation(article);
    } else if (article) {
      // The page's refresh is in <noscript>: without fetch, reload as it would have.
      window.setTimeout(function () { window.location.reload(); }, 2000);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();

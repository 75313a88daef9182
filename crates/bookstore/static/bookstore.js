// Rananeeti Books: small enhancements. Every page works without this file.
(function () {
  "use strict";

  var POLL_INTERVAL_MS = 1000;
  var POLL_FAILURES_MAX = 5; // then reload the page, which always works

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

  // Every form: a second click does not send it again, and the button says what is happening.
  function guardForm(form) {
    renewKeyOnChange(form);
    form.addEventListener("submit", function (event) {
      var question = form.getAttribute("data-confirm");
      if (question && !window.confirm(question)) {
        event.preventDefault();
        return;
      }
      if (form.getAttribute("data-sent") === "true") {
        event.preventDefault();
        return;
      }
      form.setAttribute("data-sent", "true");
      var button = form.querySelector("button[type=submit]");
      if (button) {
        // Disabled after this tick so the browser still sends the form (and the button's value).
        window.setTimeout(function () {
          button.disabled = true;
          var busy = button.getAttribute("data-busy-label");
          if (busy) button.textContent = busy;
        }, 0);
      }
    });
  }

  // A page shown again from the back/forward cache: its forms can be sent again.
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) return;
    Array.prototype.forEach.call(document.querySelectorAll("form[data-sent]"), function (form) {
      form.removeAttribute("data-sent");
      var button = form.querySelector("button[type=submit]");
      if (button) button.disabled = false;
    });
  });

  // Order page: while the order is pending, ask every second where it stands; once it is
  // confirmed or refused, swap in the freshly rendered page content (and the cart badge).
  function followOrder(article) {
    var url = article.getAttribute("data-poll-url");
    var failures = 0;

    function replaceContent() {
      return fetch(window.location.href, { headers: { Accept: "text/html" }, credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (!response.ok) throw new Error("the order page answered " + response.status);
          return response.text();
        })
        .then(function (html) {
          var fresh = new DOMParser().parseFromString(html, "text/html");
          var main = document.getElementById("main");
          var freshMain = fresh.getElementById("main");
          if (!main || !freshMain) throw new Error("no main element");
          main.innerHTML = freshMain.innerHTML;
          var badge = document.getElementById("cart-link");
          var freshBadge = fresh.getElementById("cart-link");
          if (badge && freshBadge) badge.innerHTML = freshBadge.innerHTML;
          document.title = fresh.title;
          start();
        });
    }

    function poll() {
      fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (!response.ok) throw new Error("status answered " + response.status);
          return response.json();
        })
        .then(function (order) {
          failures = 0;
          if (order.status === "pending") {
            window.setTimeout(poll, POLL_INTERVAL_MS);
            return;
          }
          return replaceContent().catch(function () {
            window.location.reload();
          });
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
    Array.prototype.forEach.call(document.querySelectorAll("form[method=post]"), function (form) {
      if (form.getAttribute("data-guarded") === "true") return;
      form.setAttribute("data-guarded", "true");
      guardForm(form);
    });
    var summary = document.getElementById("error-summary");
    if (summary) summary.focus();
    var article = document.querySelector("#order[data-poll-url]");
    if (article && window.fetch && window.DOMParser) {
      followOrder(article);
    } else if (article) {
      // The page's refresh is in <noscript>: without fetch, reload as it would have.
      window.setTimeout(function () { window.location.reload(); }, 3000);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();

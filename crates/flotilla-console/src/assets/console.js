// Flotilla console: progressive enhancement only. Every page works without
// this file; it adds copy buttons. Loaded with `defer` from /app/assets
// (the Content-Security-Policy allows no inline script).
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var source = document.getElementById(button.getAttribute("data-copy"));
      if (!source) return;
      var text = source.textContent;
      var done = function (label) {
        var original = button.textContent;
        button.textContent = label;
        setTimeout(function () { button.textContent = original; }, 2000);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(
          function () { done("Copied"); },
          function () { select(source); done("Press Ctrl+C"); }
        );
      } else {
        select(source);
        done("Press Ctrl+C");
      }
    });
  });
});

function select(node) {
  var range = document.createRange();
  range.selectNodeContents(node);
  var selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
}

// The event browser's live tail: polls /app/data/<stream>/tail (same
// origin, the session cookie) and puts new events at the top of the
// table. Built with DOM methods and textContent only: event text is
// never parsed as HTML. Nothing is kept in the browser's storage.
document.addEventListener("DOMContentLoaded", function () {
  var button = document.getElementById("e-tail");
  var table = document.getElementById("e-events");
  if (!button || !table) return;
  var status = document.getElementById("e-tail-status");
  var base = button.getAttribute("data-tail");
  var url = new URL(base, window.location.href);
  var after = url.searchParams.get("after") || "";
  var timer = null;
  var failures = 0;
  button.hidden = false;

  function say(text) { if (status) status.textContent = text; }

  function add(event) {
    var tbody = table.tBodies[0];
    var tr = document.createElement("tr");
    var td = document.createElement("td");
    td.className = "nowrap";
    var time = document.createElement("time");
    time.setAttribute("datetime", event.timestamp);
    time.textContent = event.time;
    td.appendChild(time);
    tr.appendChild(td);
    var cell = document.createElement("td");
    var details = document.createElement("details");
    var summary = document.createElement("summary");
    summary.textContent = event.summary;
    var pre = document.createElement("pre");
    pre.textContent = event.source;
    details.appendChild(summary);
    details.appendChild(pre);
    cell.appendChild(details);
    tr.appendChild(cell);
    tr.className = "new";
    tbody.insertBefore(tr, tbody.firstChild);
    var empty = document.getElementById("e-empty");
    if (empty) empty.hidden = true;
  }

  function poll() {
    url.searchParams.set("after", after);
    fetch(url.toString(), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (res) {
        var type = res.headers.get("Content-Type") || "";
        if (!res.ok || type.indexOf("application/json") !== 0) throw new Error("signed out or refused");
        return res.json();
      })
      .then(function (body) {
        failures = 0;
        body.events.forEach(add);
        after = body.after;
        var n = table.tBodies[0].rows.length;
        say("Live: " + (body.events.length ? body.events.length + " new, " : "") + n + " shown");
        if (timer !== null) timer = setTimeout(poll, body.more ? 250 : 2000);
      })
      .catch(function () {
        failures += 1;
        if (failures >= 3) { stop(); say("Live tail stopped: the server did not answer (signed out?). Refresh the page."); return; }
        if (timer !== null) timer = setTimeout(poll, 4000);
      });
  }

  function start() {
    button.setAttribute("aria-pressed", "true");
    button.textContent = "Stop live tail";
    say("Live: waiting for events");
    timer = setTimeout(poll, 0);
  }

  function stop() {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    button.setAttribute("aria-pressed", "false");
    button.textContent = "Live tail";
  }

  button.addEventListener("click", function () {
    if (timer === null) { start(); } else { stop(); say("Live tail paused"); }
  });
});

// deployhook status pages, live: the dashboard and a job page refresh themselves when a job
// changes state (server-sent events from /events), and a running job's log streams in. Without
// this script the pages are complete as served; with it they need no reload.
"use strict";
(function () {
  var main = document.querySelector("main");
  if (!main || !window.EventSource || !window.fetch) return;
  var pending = null;
  var asked = 0;
  var shown = 0;
  function refresh() {
    pending = null;
    var mine = ++asked;
    fetch(location.pathname + location.search, { cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (html) {
        // Answers can arrive out of order: never show an older page over a newer one.
        if (mine < shown) return;
        shown = mine;
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector("main");
        if (!fresh) return;
        var log = document.getElementById("log");
        var keep = log && log.dataset.streaming === "1" ? log : null;
        main.innerHTML = fresh.innerHTML;
        if (keep) document.getElementById("log").replaceWith(keep);
        follow();
      })
      .catch(function () {});
  }
  var events = new EventSource("/events");
  events.addEventListener("change", function () {
    if (!pending) pending = setTimeout(refresh, 150);
  });
  // A hidden or closed page gives its connection back (browsers allow few per host).
  addEventListener("pagehide", function () { events.close(); });
  // A running job's log: the whole log, then new output as it is written.
  function follow() {
    var log = document.getElementById("log");
    if (!log || !log.dataset.job || log.dataset.open !== "1" || log.dataset.streaming) return;
    log.dataset.streaming = "1";
    fetch("/jobs/" + log.dataset.job + "/log?follow=1&tail=2000", { cache: "no-store" }).then(function (r) {
      if (!r.ok) throw new Error(r.status);
      var reader = r.body.getReader();
      var decoder = new TextDecoder();
      var first = true;
      function pump() {
        return reader.read().then(function (chunk) {
          if (chunk.done) { log.dataset.streaming = "done"; return; }
          var text = decoder.decode(chunk.value, { stream: true });
          if (first) { log.textContent = ""; first = false; }
          log.append(text);
          return pump();
        });
      }
      return pump();
    }).catch(function () { log.dataset.streaming = ""; });
  }
  follow();
})();

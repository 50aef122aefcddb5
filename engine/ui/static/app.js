// Waitpoint UI: countdowns, live refresh over server-sent events, small form helpers.
// Every page works without this script; it only keeps pages current and friendlier.
"use strict";

(function () {
  const live = () => document.getElementById("live");

  function span(ms) {
    let seconds = Math.max(0, Math.round(Math.abs(ms) / 1000));
    const parts = [];
    for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]]) {
      if (seconds >= size || (unit === "s" && parts.length === 0)) {
        parts.push(Math.floor(seconds / size) + unit);
        seconds %= size;
      }
      if (parts.length === 2) break;
    }
    return parts.join(" ");
  }

  function tick() {
    const now = Date.now();
    for (const el of document.querySelectorAll("time[data-countdown]")) {
      const left = Date.parse(el.getAttribute("datetime")) - now;
      el.textContent = left > 0 ? "in " + span(left) : "expired " + span(left) + " ago";
      el.classList.toggle("expired", left <= 0);
    }
    for (const el of document.querySelectorAll("time[data-ago]")) {
      const ago = now - Date.parse(el.getAttribute("datetime"));
      el.textContent = ago >= 0 ? span(ago) + " ago" : "in " + span(ago);
    }
  }

  function trackChanges(root) {
    for (const form of root.querySelectorAll("form[data-track-changes]")) {
      form.addEventListener("input", (event) => {
        form.dataset.dirty = "1";
        // The server's message was about the old value: drop it once the field changes.
        const field = event.target.closest(".field");
        if (!field || !field.classList.contains("invalid")) return;
        field.classList.remove("invalid");
        for (const note of field.querySelectorAll("p.error:not(.json-live)")) note.remove();
        for (const input of field.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
      });
    }
    for (const area of root.querySelectorAll("textarea[data-json]")) {
      const note = document.getElementById(area.id + "-live");
      area.addEventListener("input", () => {
        if (!note) return;
        const text = area.value.trim();
        try { if (text) JSON.parse(text); note.hidden = true; }
        catch (err) { note.textContent = "not valid JSON yet: " + err.message; note.hidden = false; }
      });
    }
    for (const button of root.querySelectorAll("button[data-copy]")) {
      button.addEventListener("click", async () => {
        const field = document.getElementById(button.dataset.copy);
        field.select();
        try { await navigator.clipboard.writeText(field.value); button.textContent = "Copied"; }
        catch (err) { button.textContent = "Press Ctrl+C"; }
      });
    }
  }

  // Live pages: <main data-stream="/api/.../stream">. On each event the page is fetched
  // again and its <main> swapped in, unless someone is typing in a form on it. Events only
  // say that something changed (list events leave bodies out): the page shows the rest.
  let source = null;
  let pending = null;
  let retrying = null;
  let retryMs = 5000;

  async function refresh() {
    const main = document.getElementById("content");
    if (main.querySelector("form[data-dirty]")) return;
    const reply = await fetch(location.href, { credentials: "same-origin", headers: { "accept": "text/html" } });
    if (!reply.ok) return;
    const page = new DOMParser().parseFromString(await reply.text(), "text/html");
    const fresh = page.getElementById("content");
    if (!fresh || main.querySelector("form[data-dirty]")) return;
    main.innerHTML = fresh.innerHTML;
    document.title = page.title;
    trackChanges(main);
    tick();
    if (live()) live().textContent = "Page updated";
    const stream = fresh.getAttribute("data-stream");
    if (stream !== main.getAttribute("data-stream")) {
      if (stream) main.setAttribute("data-stream", stream); else main.removeAttribute("data-stream");
      follow(false);
    }
  }

  // again: a retry after the server refused the stream (429/503: too many open). The browser
  // gives up on a refused EventSource for good, so the page tries again itself, less often
  // each time, and refreshes on the first event: things may have changed meanwhile.
  function follow(again) {
    if (source) { source.close(); source = null; }
    clearTimeout(retrying);
    const main = document.getElementById("content");
    const url = main && main.getAttribute("data-stream");
    if (!url || !window.EventSource) return;
    const current = source = new EventSource(url);
    let first = !again;
    const changed = () => {
      if (first) { first = false; return; }  // the state the page was rendered from
      clearTimeout(pending);
      pending = setTimeout(refresh, 150);
    };
    for (const kind of ["run", "runs", "tokens"]) current.addEventListener(kind, changed);
    current.addEventListener("open", () => { retryMs = 5000; });
    current.addEventListener("error", () => {
      if (current !== source || current.readyState !== EventSource.CLOSED) return;
      source = null;
      retrying = setTimeout(() => follow(true), retryMs);
      retryMs = Math.min(retryMs * 2, 60000);
    });
    current.addEventListener("end", () => { current.close(); source = null; clearTimeout(pending); pending = setTimeout(refresh, 50); });
  }

  document.addEventListener("DOMContentLoaded", () => {
    // the notice of what a button just did (?done=...) is shown once: the page's own
    // refreshes and a reload leave it out
    const here = new URL(location.href);
    if (here.searchParams.has("done")) {
      here.searchParams.delete("done");
      history.replaceState(null, "", here);
    }
    trackChanges(document);
    tick();
    setInterval(tick, 1000);
    follow(false);
  });
})();

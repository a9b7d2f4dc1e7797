// Shared by the grid and the camera page: small DOM helpers and the event stream.
"use strict";

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(x, digits) {
  return (x === null || x === undefined) ? "–" : Number(x).toFixed(digits);
}

const STATE_KIND = {
  started: "ok", connected: "ok", streaming: "ok", redis_restored: "ok", registered: "ok",
  connecting: "warn", reconnecting: "warn", stalled: "warn", lost: "warn", bad_frame: "warn",
  eos: "done", stopped: "done", error: "bad", failed: "bad",
};

function setState(node, cam) {
  const state = cam.failed ? "failed" : cam.state;
  node.textContent = state;
  node.className = "state state-" + (STATE_KIND[state] || "warn");
  node.title = cam.failed || cam.reason || "";
}

function budgetText(cam) {
  if (cam.budget) {
    const unit = cam.budget.resource === "ms" ? "ms" : (cam.budget.resource || "");
    return `${cam.policy} ${cam.budget.label}: ${fmt(cam.budget.used, 1)} of ${fmt(cam.budget.limit, 1)} ${unit} per frame`;
  }
  if (cam.phase === "cold-start") return `${cam.policy} ${cam.budget_label || ""}: cold start, every model runs until the links are trained`;
  if (cam.policy === "all") return "policy all: every model on every frame (no budget)";
  return cam.policy ? `policy ${cam.policy}` : "no records yet";
}

function setBudget(root, cam) {
  const fill = root.querySelector(".fill");
  const pct = cam.budget && cam.budget.limit > 0 ? Math.min(100, 100 * cam.budget.used / cam.budget.limit) : 0;
  fill.style.width = pct + "%";
  fill.classList.toggle("over", !!cam.budget && cam.budget.used > cam.budget.limit);
  root.querySelector(".budget-text").textContent = budgetText(cam);
}

function statsLine(cam) {
  return [
    `${fmt(cam.fps, 1)} frames/s`,
    `lag ${fmt(cam.lag_s, 1)} s`,
    `${cam.processed} processed`,
    cam.skipped ? `${cam.skipped} skipped` : null,
    cam.dropped ? `${cam.dropped} dropped` : null,
  ].filter(Boolean);
}

function setBanner(msg) {
  const b = document.getElementById("banner");
  b.hidden = !msg;
  b.textContent = msg || "";
}

// Server-sent events; the browser reconnects by itself (the server asks for 1 s).
function follow(url, onData) {
  let lost = null;
  const es = new EventSource(url);
  es.onmessage = (ev) => {
    lost = null;
    const data = JSON.parse(ev.data);
    setBanner(data.redis && !data.redis.ok
      ? `Redis unreachable (${data.redis.url}): ${String(data.redis.error).replace(/[.\s]+$/, "")}. Retrying; showing the last known state.` : null);
    document.body.classList.toggle("stale", !!data.stale);
    onData(data);
  };
  es.onerror = () => {
    lost = lost || Date.now();
    setTimeout(() => {
      if (lost && Date.now() - lost >= 1500) setBanner("The web view itself is unreachable. Retrying.");
    }, 1600);
  };
  return es;
}

// One camera: the live view (MJPEG), its numbers, each model's latest value and the schedule strip.
"use strict";

const NAME = decodeURIComponent(location.pathname.split("/")[2]);
const KEEP = 60;
const strip = document.getElementById("strip");
let entries = [];  // compact records, oldest first: {frame, phase, o: {model: [origin, confidence]}}
let colors = {};

document.title = "mlink: " + NAME;
document.getElementById("title").textContent = NAME;
document.getElementById("strip-n").textContent = KEEP;
const BASE = `/camera/${encodeURIComponent(NAME)}`;
document.getElementById("mjpeg").href = BASE + "/stream.mjpg";
document.getElementById("json").href = `/api/camera/${encodeURIComponent(NAME)}/records?count=20`;
let loading = false;

// The frame and the table describe the same record: the table is redrawn when the image of
// its frame has loaded (the server keeps that frame for this page even if a newer one exists).
function showFrame(cam, then) {
  const img = document.getElementById("live");
  if (cam.frame === null || String(cam.frame) === img.dataset.frame) { then(); return; }
  if (loading) return;
  loading = true;
  const next = new Image();
  next.onload = () => {
    img.src = next.src;
    img.dataset.frame = String(cam.frame);
    document.getElementById("live-placeholder").hidden = true;
    loading = false;
    then();
  };
  next.onerror = () => { loading = false; };
  next.src = `${BASE}/latest.jpg?frame=${cam.frame}`;
}

function renderStrip() {
  const models = entries.length ? Object.keys(entries[entries.length - 1].o) : [];
  const rows = [];
  const phase = el("div", "row phase-row");
  phase.append(el("span", "rname", "phase"));
  const pc = el("span", "cells");
  for (const e of entries) {
    const c = el("span", "cell phase-" + (e.phase || "none"));
    c.title = `frame ${e.frame}: ${e.phase || ""}`;
    pc.append(c);
  }
  phase.append(pc);
  rows.push(phase);
  for (const m of models) {
    const row = el("div", "row");
    row.dataset.model = m;
    row.append(el("span", "rname", m));
    const cells = el("span", "cells");
    let ran = 0;
    for (const e of entries) {
      const [origin, conf] = e.o[m] || ["missing", null];
      if (origin === "executed") ran += 1;
      const c = el("span", "cell o-" + origin);
      c.style.setProperty("--c", colors[m] || "#888");
      c.title = `frame ${e.frame}: ${origin}` + (conf !== null && conf !== undefined ? ` ${conf.toFixed(2)}` : "");
      cells.append(c);
    }
    row.append(cells, el("span", "rcount", `${ran}/${entries.length} ran`));
    rows.push(row);
  }
  strip.replaceChildren(...rows);
  if (entries.length) {
    strip.dataset.lastFrame = String(entries[entries.length - 1].frame);
    strip.dataset.frames = String(entries.length);
  }
}

function renderCamera(cam) {
  setState(document.getElementById("state"), cam);
  showFrame(cam, () => renderValues(cam));
  const stats = document.getElementById("stats");
  const parts = statsLine(cam);
  if (cam.phase) parts.push(cam.phase);
  if (cam.latency_ms !== null) parts.push(`record latency ${fmt(cam.latency_ms / 1000, 2)} s`);
  const t = cam.totals;
  parts.push(`outputs so far: ${t.executed} executed, ${t.linked} linked, ${t.held} held`);
  stats.replaceChildren(...parts.map((s) => el("span", "", s)));
}

function renderValues(cam) {
  setBudget(document.querySelector("aside"), cam);
  const tbody = document.querySelector("#values tbody");
  tbody.dataset.frame = String(cam.frame);
  tbody.replaceChildren(...cam.models.map((m) => {
    colors[m.name] = m.color;
    const tr = el("tr", "o-" + m.origin);
    tr.dataset.model = m.name;
    const name = el("td", "mname");
    const sw = el("span", "swatch");
    sw.style.setProperty("--c", m.color);
    name.append(sw, document.createTextNode(m.name));
    const rate = m.rate === null || m.rate === undefined ? "–" : (m.rate >= 1 ? "every frame" : (m.rate > 0 ? `1/${Math.round(1 / m.rate)}` : "profiling frames only"));
    tr.append(name, el("td", "origin", m.origin_text + (m.via ? ` (via ${m.via.join(", ")})` : "")), el("td", "value", m.text), el("td", "rate", rate));
    return tr;
  }));
}

follow(`/camera/${encodeURIComponent(NAME)}/events`, (data) => {
  if (data.camera) renderCamera(data.camera);
  if (data.reset) entries = [];
  if (data.strip && data.strip.length) {
    const newest = Math.max(...data.strip.map((e) => e.frame));
    if (entries.length && newest < entries[entries.length - 1].frame) entries = [];  // a new session numbered from 0
    const seen = new Set(entries.map((e) => e.frame));
    for (const e of data.strip) if (!seen.has(e.frame)) { seen.add(e.frame); entries.push(e); }
    entries.sort((a, b) => a.frame - b.frame);
    entries = entries.slice(-KEEP);
    renderStrip();
  }
});

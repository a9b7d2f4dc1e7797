// The camera grid: one tile per camera, updated from /events.
"use strict";

const grid = document.getElementById("grid");

function makeTile(name) {
  const t = el("section", "tile");
  t.dataset.camera = name;
  const head = el("div", "tile-head");
  const a = el("a", "name", name);
  a.href = "/camera/" + encodeURIComponent(name);
  head.append(a, el("span", "state"));
  const view = el("a", "view");
  view.href = a.href;
  const img = el("img", "frame");
  img.alt = name + ": latest frame";
  img.hidden = true;
  view.append(img, el("div", "placeholder", "no frames yet"));
  const budget = el("div", "budget");
  const meter = el("div", "meter");
  meter.append(el("div", "fill"));
  budget.append(meter, el("span", "budget-text"));
  const stats = el("div", "stats");
  stats.append(el("span", "numbers"), el("span", "phase"));
  t.append(head, view, stats, budget, el("ul", "models"));
  return t;
}

// The models list describes the frame shown: it is redrawn when the image of its frame has loaded.
function loadFrame(tile, cam, then) {
  const img = tile.querySelector("img.frame");
  if (cam.frame === null || String(cam.frame) === tile.dataset.frame) { then(); return; }
  if (tile.dataset.loading) return;
  tile.dataset.loading = "1";
  const next = new Image();
  next.onload = () => {
    img.src = next.src;
    img.hidden = false;
    tile.querySelector(".view").style.aspectRatio = `${next.naturalWidth} / ${next.naturalHeight}`;
    tile.querySelector(".placeholder").hidden = true;
    tile.dataset.frame = String(cam.frame);
    delete tile.dataset.loading;
    then();
  };
  next.onerror = () => { delete tile.dataset.loading; };
  next.src = `/camera/${encodeURIComponent(cam.name)}/latest.jpg?frame=${cam.frame}`;
}

function updateTile(tile, cam) {
  setState(tile.querySelector(".state"), cam);
  tile.dataset.state = cam.state;
  const ph = tile.querySelector(".placeholder");
  if (cam.frame === null) {
    ph.textContent = cam.failed ? cam.failed : "no frames yet";
  }
  const numbers = statsLine(cam).map((s) => el("span", s.endsWith("frames/s") ? "fps" : (s.startsWith("lag") ? "lag" : ""), s));
  tile.querySelector(".stats .numbers").replaceChildren(...numbers);
  loadFrame(tile, cam, () => renderModels(tile, cam));
}

function renderModels(tile, cam) {
  const phase = tile.querySelector(".stats .phase");
  phase.textContent = cam.phase || "";
  phase.className = "phase phase-" + (cam.phase || "none");
  setBudget(tile, cam);
  const ul = tile.querySelector(".models");
  ul.dataset.frame = String(cam.frame);
  ul.replaceChildren(...cam.models.map((m) => {
    const li = el("li", "model o-" + m.origin);
    li.dataset.model = m.name;
    const sw = el("span", "swatch");
    sw.style.setProperty("--c", m.color);
    li.append(sw, el("span", "mname", m.name), el("span", "origin", m.origin_text), el("span", "value", m.text));
    if (m.via) li.title = "derived from: " + m.via.join(", ");
    return li;
  }));
}

follow("/events", (data) => {
  const names = new Set(data.cameras.map((c) => c.name));
  for (const t of grid.querySelectorAll(".tile")) if (!names.has(t.dataset.camera)) t.remove();
  document.getElementById("empty").hidden = data.cameras.length > 0;
  for (const cam of data.cameras) {
    let t = grid.querySelector(`.tile[data-camera="${CSS.escape(cam.name)}"]`);
    if (!t) { t = makeTile(cam.name); grid.append(t); }
    updateTile(t, cam);
  }
});

// Trainer dashboard: polls /stats.json and draws it. No libraries, no build step.
// Renders any stats.json of the contract (docs/contract.md section 4); keys a trainer does not
// write show "—". Data never goes through innerHTML: every value is set as text.
"use strict";

// ?poll=MS changes the interval (tests use a short one); never below 250 ms.
const POLL_MS = Math.max(250, Number(new URLSearchParams(location.search).get("poll")) || 2000);
const STALE_AFTER_S = 60;
const DASH = "—";

// ---- formatting -------------------------------------------------------------------------
const isNum = (v) => typeof v === "number" && Number.isFinite(v);
const fmtInt = (v) => (isNum(v) ? Math.round(v).toLocaleString("en-US") : fallback(v));
function fmtFloat(v, digits = 4) {
  if (!isNum(v)) return fallback(v);
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e6 || a < 1e-3) return v.toExponential(2);
  if (a >= 1000) return Math.round(v).toLocaleString("en-US");
  return String(Number(v.toPrecision(digits)));
}
const fmtSci = (v) => (isNum(v) ? v.toExponential(2) : fallback(v));
const fmtPct = (v) => (isNum(v) ? (v * 100).toFixed(1) + " %" : fallback(v));
const fmtRate = (v) => (isNum(v) ? fmtFloat(v, 3) + " /s" : fallback(v));
const fmtMB = (v) => (isNum(v) ? Math.round(v).toLocaleString("en-US") + " MB" : fallback(v));
function fmtDuration(v) {
  if (!isNum(v)) return fallback(v);
  const s = Math.max(0, v);
  if (s < 10) return s.toFixed(1) + " s";
  if (s < 120) return Math.round(s) + " s";
  if (s < 7200) return Math.floor(s / 60) + " min " + String(Math.round(s % 60)).padStart(2, "0") + " s";
  if (s < 172800) return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " min";
  return (s / 86400).toFixed(1) + " days";
}
function fmtText(v) { return typeof v === "string" && v !== "" ? v : fallback(v); }
function fallback(v) {
  if (v === undefined || v === null || v === "") return DASH;
  if (typeof v === "number") return String(v); // NaN / Infinity if a writer sent them
  if (typeof v === "string" || typeof v === "boolean") return String(v);
  return DASH;
}
function fmtTime(unix) {
  if (!isNum(unix)) return DASH;
  const d = new Date(unix * 1000);
  // Time of day for today's updates; the date too for an old run's file.
  return Math.abs(Date.now() - d.getTime()) > 20 * 3600e3
    ? d.toLocaleString("en-GB") : d.toLocaleTimeString("en-GB");
}

// ---- the figure cards: [key, label, formatter], grouped ------------------------------------
const GROUPS = [
  ["Losses", [
    ["total_loss", "total loss", fmtFloat], ["policy_loss", "policy loss", fmtFloat],
    ["value_loss", "value loss", fmtFloat], ["learning_rate", "learning rate", fmtSci],
    ["policy_entropy", "policy entropy", fmtFloat], ["grad_norm", "grad norm", fmtFloat],
  ]],
  ["Throughput", [
    ["samples_per_sec", "samples / s", fmtFloat], ["steps_per_sec", "steps / s", fmtFloat],
    ["wait_fraction", "waiting for data", fmtPct], ["new_rows_per_sec", "new rows / s", fmtFloat],
    ["samples_seen", "samples trained", fmtInt],
  ]],
  ["Replay data", [
    ["replay_buffer_size", "replay rows", fmtInt], ["window_size", "window", fmtInt],
    ["rows_seen", "rows seen", fmtInt], ["reuse_ratio", "reuse ratio", fmtFloat],
    ["newest_row_age_s", "newest row age", fmtDuration], ["bad_rows", "bad rows", fmtInt],
  ]],
  ["Models", [
    ["actor_model_step", "actors on step", fmtInt], ["actor_lag", "actor lag", fmtInt],
    ["last_checkpoint", "checkpoint", checkpointName], ["last_publish_seconds", "last publish", fmtDuration],
    ["publish_failures", "publish failures", fmtInt],
  ]],
  ["Process", [
    ["rss_mb", "memory (RSS)", fmtMB], ["trainer_version", "trainer version", fmtText],
    ["timestamp", "last update", fmtTime],
  ]],
];
// Figures that are bad news when above zero.
const WARN_IF_POSITIVE = new Set(["bad_rows", "publish_failures"]);

// "…/model_step_001200.onnx" -> "step 1,200"; any other name -> its file name.
function checkpointName(v) {
  if (typeof v !== "string" || v === "") return fallback(v);
  const parts = v.split(/[\\/]/);
  const name = parts[parts.length - 1];
  const m = /step_0*(\d+)/.exec(name);
  return m ? "step " + Number(m[1]).toLocaleString("en-US") : name;
}

// ---- small DOM helpers ----------------------------------------------------------------------
const $ = (id) => document.getElementById(id);
function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
const SVGNS = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs = {}, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}
function setText(id, text) { const e = $(id); if (e && e.textContent !== text) e.textContent = text; }

function buildCards() {
  const root = $("cards");
  for (const [title, fields] of GROUPS) {
    const card = el("div", { class: "card" });
    card.appendChild(el("h3", {}, title));
    const dl = el("dl");
    for (const [key, label] of fields) {
      dl.appendChild(el("dt", {}, label));
      dl.appendChild(el("dd", { id: "v-" + key, "data-key": key }, DASH));
    }
    card.appendChild(dl);
    root.appendChild(card);
  }
}

// ---- charts -----------------------------------------------------------------------------
const W = 640, H = 230, M = { l: 52, r: 24, t: 10, b: 26 };

function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}
function tickLabel(v) {
  const a = Math.abs(v);
  if (v === 0) return "0";
  if (a >= 1e4 || a < 1e-2) return v.toExponential(1);
  return String(Number(v.toPrecision(3)));
}
function stepLabel(v) { return Math.abs(v) >= 1e4 ? (v / 1000).toLocaleString("en-US") + "k" : v.toLocaleString("en-US"); }

// Keep charts cheap for very long histories: at most ~1 point per horizontal pixel.
function thin(points, maxPoints = 800) {
  if (points.length <= maxPoints) return points;
  const stride = points.length / maxPoints, out = [];
  for (let i = 0; i < maxPoints; i++) out.push(points[Math.floor(i * stride)]);
  out.push(points[points.length - 1]);
  return out;
}

// [min, max] of coordinate i. A loop, not Math.min(...values): a spread passes every value
// as an argument, and past ~125k of them V8 throws RangeError, losing the whole render.
function extent(points, i) {
  let lo = Infinity, hi = -Infinity;
  for (const p of points) {
    if (p[i] < lo) lo = p[i];
    if (p[i] > hi) hi = p[i];
  }
  return [lo, hi];
}

// series: [{name, color, points: [[x, y], ...]}]; opts: {yMin, yMax, fmt}
function drawChart(container, series, opts = {}) {
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  const all = [];
  for (const s of series) for (const p of s.points) all.push(p);
  if (all.length === 0) {
    svg.appendChild(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, opts.empty || "no data yet"));
    container.replaceChildren(svg);
    container.dataset.points = "0";
    return;
  }
  let [xMin, xMax] = extent(all, 0);
  if (xMax === xMin) { xMin -= 1; xMax += 1; }
  const [dataYMin, dataYMax] = extent(all, 1);
  let yMin = opts.yMin !== undefined ? opts.yMin : dataYMin;
  let yMax = opts.yMax !== undefined ? opts.yMax : dataYMax;
  if (opts.yMin === undefined && yMin > 0 && yMin < yMax * 0.5) yMin = 0;
  if (yMax === yMin) { yMax = yMin + (Math.abs(yMin) || 1) * 0.1; yMin -= (Math.abs(yMin) || 1) * 0.1; }
  if (opts.yMax === undefined) yMax += (yMax - yMin) * 0.05;
  const px = (x) => M.l + ((x - xMin) / (xMax - xMin)) * (W - M.l - M.r);
  const py = (y) => H - M.b - ((y - yMin) / (yMax - yMin)) * (H - M.t - M.b);

  for (const t of niceTicks(yMin, yMax, 4)) {
    svg.appendChild(svgEl("line", { x1: M.l, x2: W - M.r, y1: py(t), y2: py(t), class: "grid" }));
    svg.appendChild(svgEl("text", { x: M.l - 6, y: py(t) + 4, "text-anchor": "end" }, (opts.fmt || tickLabel)(t)));
  }
  for (const t of niceTicks(xMin, xMax, 6)) {
    if (t < xMin || t > xMax) continue;
    svg.appendChild(svgEl("line", { x1: px(t), x2: px(t), y1: H - M.b, y2: H - M.b + 4, class: "axis" }));
    svg.appendChild(svgEl("text", { x: px(t), y: H - 8, "text-anchor": "middle" }, stepLabel(t)));
  }
  svg.appendChild(svgEl("line", { x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b, class: "axis" }));
  svg.appendChild(svgEl("line", { x1: M.l, x2: M.l, y1: M.t, y2: H - M.b, class: "axis" }));

  for (const s of series) {
    const pts = thin(s.points);
    if (pts.length === 0) continue;
    const d = pts.map((p, i) => (i ? "L" : "M") + px(p[0]).toFixed(1) + " " + py(p[1]).toFixed(1)).join("");
    svg.appendChild(svgEl("path", { d, fill: "none", stroke: s.color, "stroke-width": 2, "stroke-linejoin": "round", "data-series": s.name }));
    if (pts.length <= 40) {
      for (const p of pts) svg.appendChild(svgEl("circle", { cx: px(p[0]).toFixed(1), cy: py(p[1]).toFixed(1), r: 2.5, fill: s.color }));
    }
  }
  const cursor = svgEl("line", { y1: M.t, y2: H - M.b, class: "cursor", visibility: "hidden" });
  svg.appendChild(cursor);
  container.replaceChildren(svg);
  container.dataset.points = String(all.length);
  attachTooltip(container, svg, cursor, series, px, xMin, xMax, opts.fmt || ((v) => fmtFloat(v)));
}

function attachTooltip(container, svg, cursor, series, px, xMin, xMax, fmt) {
  const tip = el("div", { class: "tip" });
  tip.hidden = true;
  container.appendChild(tip);
  svg.addEventListener("mousemove", (ev) => {
    const r = svg.getBoundingClientRect();
    const xv = xMin + ((ev.clientX - r.left) / r.width * W - M.l) / (W - M.l - M.r) * (xMax - xMin);
    const lines = [];
    let xs = null;
    for (const s of series) {
      if (!s.points.length) continue;
      let best = s.points[0];
      for (const p of s.points) if (Math.abs(p[0] - xv) < Math.abs(best[0] - xv)) best = p;
      xs = best[0];
      lines.push(s.name + " " + fmt(best[1]));
    }
    if (xs === null) return;
    cursor.setAttribute("x1", px(xs)); cursor.setAttribute("x2", px(xs));
    cursor.setAttribute("visibility", "visible");
    tip.textContent = "step " + xs.toLocaleString("en-US") + " · " + lines.join(" · ");
    tip.hidden = false;
    const left = Math.min(ev.clientX - r.left + 12, r.width - tip.offsetWidth - 4);
    tip.style.left = Math.max(0, left) + "px";
    tip.style.top = "4px";
  });
  svg.addEventListener("mouseleave", () => { tip.hidden = true; cursor.setAttribute("visibility", "hidden"); });
}

function legend(id, series) {
  const root = $(id);
  if (root.childElementCount) return;
  for (const s of series) {
    const span = el("span");
    const sw = el("i");
    sw.style.background = s.color;
    span.appendChild(sw);
    span.appendChild(document.createTextNode(s.name));
    root.appendChild(span);
  }
}

function pointsOf(list, key) {
  const out = [];
  if (!Array.isArray(list)) return out;
  for (const e of list) if (e && isNum(e.step) && isNum(e[key])) out.push([e.step, e[key]]);
  return out;
}

const LOSS_SERIES = [["total_loss", "total", "#2563eb"], ["policy_loss", "policy", "#d97706"], ["value_loss", "value", "#059669"]];
const EVAL_SERIES = [["win_rate", "win", "#059669"], ["draw_rate", "draw", "#9ca3af"], ["loss_rate", "loss", "#dc2626"]];

function renderCharts(s) {
  const loss = LOSS_SERIES.map(([k, n, c]) => ({ name: n, color: c, points: pointsOf(s.history, k) }));
  legend("loss-legend", loss);
  drawChart($("chart-loss"), loss, { empty: "no loss history yet" });
  const ev = EVAL_SERIES.map(([k, n, c]) => ({ name: n, color: c, points: pointsOf(s.eval_history, k) }));
  legend("eval-legend", ev);
  drawChart($("chart-eval"), ev, { yMin: 0, yMax: 1, fmt: (v) => Math.round(v * 100) + "%", empty: "no evaluations yet" });
  drawChart($("chart-lr"), [{ name: "lr", color: "#7c3aed", points: pointsOf(s.history, "learning_rate") }],
    { yMin: 0, fmt: (v) => (v === 0 ? "0" : v.toExponential(1)), empty: "no history yet" });
}

function fillTable(id, rows) {
  const body = $(id).tBodies[0];
  // Appended one by one: replaceChildren(...rows) would hit the same argument limit as
  // Math.min(...) for a metrics object with very many keys.
  body.replaceChildren();
  for (const [k, v] of rows) {
    const tr = el("tr");
    tr.appendChild(el("td", {}, k));
    tr.appendChild(el("td", { "data-key": k }, v));
    body.appendChild(tr);
  }
}

function renderTables(s) {
  const e = s.last_eval && typeof s.last_eval === "object" ? s.last_eval : null;
  fillTable("last-eval", e ? [
    ["at step", fmtInt(e.step)], ["win", fmtPct(e.win_rate)], ["draw", fmtPct(e.draw_rate)],
    ["loss", fmtPct(e.loss_rate)], ["games", fmtInt(e.games_played)],
    ["avg game length", fmtFloat(e.avg_game_length, 3)], ["time", fmtTime(e.timestamp)],
  ] : [["", "no evaluation yet"]]);
  const m = s.metrics && typeof s.metrics === "object" && !Array.isArray(s.metrics) ? s.metrics : null;
  const keys = m ? Object.keys(m).sort() : [];
  fillTable("metrics", keys.length ? keys.map((k) => [k, isNum(m[k]) ? fmtFloat(m[k]) : fallback(m[k])]) : [["", DASH]]);
}

// ---- one render of a stats object ---------------------------------------------------------
function render(s, serverNow) {
  const derived = { ...s };
  if (isNum(s.step) && isNum(s.actor_model_step)) derived.actor_lag = s.step - s.actor_model_step;
  for (const [, fields] of GROUPS) {
    for (const [key, , fmt] of fields) {
      setText("v-" + key, fmt(derived[key]));
      const e = $("v-" + key);
      e.title = derived[key] === undefined ? "not in stats.json" : String(derived[key]);
      e.classList.toggle("warn", WARN_IF_POSITIVE.has(key) && isNum(derived[key]) && derived[key] > 0);
    }
  }
  setText("v-env_id", fmtText(s.env_id));
  setText("v-mode", fmtText(s.mode));
  const badge = $("state-badge");
  badge.dataset.state = typeof s.state === "string" ? s.state : "";
  setText("state-badge", typeof s.state === "string" ? s.state.replace(/_/g, " ") : DASH);
  setText("v-state_reason", typeof s.state_reason === "string" ? s.state_reason : "");

  setText("v-step", fmtInt(s.step));
  const unbounded = isNum(s.total_steps) && s.total_steps <= 0;
  setText("v-total_steps", unbounded ? "∞ (until stopped)" : fmtInt(s.total_steps));
  let pct = null;
  if (isNum(s.step) && isNum(s.total_steps) && s.total_steps > 0) pct = Math.min(100, Math.max(0, (100 * s.step) / s.total_steps));
  $("progress-fill").style.width = (pct === null ? 0 : pct) + "%";
  $("progress-bar").setAttribute("aria-valuenow", pct === null ? "0" : pct.toFixed(1));
  setText("progress-pct", pct === null ? "" : pct.toFixed(1) + " %");
  let eta = "";
  if (pct !== null && pct < 100 && isNum(s.steps_per_sec) && s.steps_per_sec > 0 && s.state === "training") {
    eta = "about " + fmtDuration((s.total_steps - s.step) / s.steps_per_sec) + " left";
  }
  setText("eta", eta);

  const age = isNum(s.timestamp) ? serverNow - s.timestamp : null;
  setText("updated", age === null ? "no timestamp" : "updated " + fmtTime(s.timestamp) + " (" + fmtDuration(Math.max(0, age)) + " ago)");
  $("stale-badge").hidden = !(age === null || age > STALE_AFTER_S);

  renderCharts(s);
  renderTables(s);
}

// ---- polling --------------------------------------------------------------------------------
let lastGood = null;   // [stats, serverNow at fetch, Date.now() at fetch]
let polls = 0;

function banner(text, kind) {
  const b = $("banner");
  b.hidden = !text;
  b.textContent = text || "";
  b.className = "banner" + (kind === "error" ? " error" : "");
  document.body.dataset.status = kind || "ok";
}

async function poll() {
  polls++;
  let res;
  try {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), 5000);
    res = await fetch("/stats.json", { cache: "no-store", signal: ctl.signal });
    clearTimeout(timer);
  } catch (err) {
    banner("dashboard server unreachable, retrying…", "error");
    return;
  }
  const dateHeader = Date.parse(res.headers.get("Date") || "");
  // The server's clock judges staleness, so a browser on another machine with a skewed
  // clock does not call fresh stats stale.
  const serverNow = (Number.isFinite(dateHeader) ? dateHeader : Date.now()) / 1000;
  if (res.ok) {
    try {
      const s = await res.json();
      if (!s || typeof s !== "object" || Array.isArray(s)) throw new Error("not an object");
      render(s, serverNow);
      lastGood = [s, serverNow, Date.now()];
      banner("", "ok");
    } catch (err) {
      banner("stats unreadable, retrying…", "unreadable");
    }
    return;
  }
  let problem = null;
  try { problem = await res.json(); } catch (err) { /* body is optional */ }
  const status = problem && typeof problem.status === "string" ? problem.status : "";
  // The server's reason (a symlink it will not follow, a JSON error) tells the user what to fix.
  const why = problem && typeof problem.detail === "string" && problem.detail ? " (" + problem.detail + ")" : "";
  if (status === "missing") {
    banner((lastGood ? "stats.json disappeared — showing the last numbers seen; waiting for stats.json…"
                     : "waiting for stats.json…") + why, "waiting");
  } else {
    banner("stats unreadable, retrying…" + (lastGood ? " (showing the last numbers seen)" : "") + why, "unreadable");
  }
  // Keep the "ago" clock of the last good copy moving while the file is unreadable.
  if (lastGood) render(lastGood[0], lastGood[1] + (Date.now() - lastGood[2]) / 1000);
}

async function loop() {
  await poll();
  setTimeout(loop, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  buildCards();
  renderCharts({});
  renderTables({});
  setText("poll-every", POLL_MS % 1000 ? POLL_MS + " ms" : POLL_MS / 1000 + " s");
  loop();
});

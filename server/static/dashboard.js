// kvserve dashboard: polls /dashboard/state and draws the block pool, the requests, the last minute's latency,
// throughput and each step's place on the roofline. Plain DOM and SVG, no library. The JSON is documented in
// docs/api.md; the numbers are defined in docs/metrics.md.
"use strict";

const REFRESH_MS = 1000;
const PALETTE = ["#5b8def", "#e5735c", "#57c785", "#d4a72c", "#b57edc", "#4cc3d9", "#ef7fb0", "#9ccc65",
                 "#f09a4a", "#7986cb", "#4db6ac", "#e57373", "#a1887f", "#90a4ae", "#ffd54f", "#64b5f6"];
const $ = (id) => document.getElementById(id);
const colour = (slot) => (slot >= 0 ? PALETTE[slot % PALETTE.length] : "");

function si(x, unit = "") {
  if (x === null || x === undefined || !isFinite(x)) return "-";
  const a = Math.abs(x);
  for (const [v, p] of [[1e15, "P"], [1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]]) {
    if (a >= v) return (x / v).toFixed(a / v >= 100 ? 0 : a / v >= 10 ? 1 : 2) + " " + p + unit;
  }
  return x.toFixed(a >= 100 ? 0 : a >= 10 ? 1 : 2) + (unit ? " " + unit : "");
}
function secs(x) {
  if (x === null || x === undefined) return "-";
  return x >= 10 ? x.toFixed(1) + " s" : x >= 1 ? x.toFixed(2) + " s" : (x * 1e3).toFixed(x >= 0.1 ? 0 : 1) + " ms";
}
const pct = (x) => (x === null || x === undefined ? "-" : (100 * x).toFixed(x >= 0.1 ? 1 : 2) + "%");
const setText = (id, text) => { const el = $(id); if (el.textContent !== String(text)) el.textContent = text; };

// ---- the block pool --------------------------------------------------------------------------------------
function drawPool(cache) {
  const pool = $("pool");
  const n = cache.cells.length;
  if (pool.childElementCount !== n) {
    pool.replaceChildren();
    const frag = document.createDocumentFragment();
    for (let i = 0; i < n; i++) { const d = document.createElement("div"); d.className = "cell f"; frag.appendChild(d); }
    pool.appendChild(frag);
    pool.classList.toggle("dense", n > 1024);
  }
  const cells = pool.children;
  for (let i = 0; i < n; i++) {
    const state = cache.cells[i], owner = cache.owners[i], el = cells[i];
    if (el.dataset.state !== state) { el.dataset.state = state; el.className = "cell " + state; }
    const fill = state === "u" || state === "s" ? (colour(owner) || "#5b8def") : "";
    if (el.style.backgroundColor !== fill) el.style.backgroundColor = fill;
    const ownerText = String(owner);
    if (el.dataset.owner !== ownerText) el.dataset.owner = ownerText;
    const first = i * cache.stride;
    el.title = cache.stride === 1 ? `block ${first}` : `blocks ${first}-${Math.min(first + cache.stride, cache.num_blocks) - 1}`;
  }
  const estimate = cache.exact ? "" : "~";
  setText("count-free", cache.free);
  setText("count-cached", estimate + cache.cached_free);
  setText("count-used", cache.used);
  setText("count-shared", estimate + cache.shared);
  setText("pool-caption", `${cache.num_blocks.toLocaleString()} blocks x ${cache.block_size} tokens` +
          (cache.stride > 1 ? `, one cell per ${cache.stride} blocks` : ""));
}

// ---- requests --------------------------------------------------------------------------------------------
function requestRow(r) {
  const tr = document.createElement("tr");
  const total = r.prompt_tokens + r.max_tokens;
  const known = r.prompt_tokens + r.output_tokens;
  const sw = r.slot >= 0 ? `<span class="swatch" style="background:${colour(r.slot)}"></span>` : "";
  const id = r.id.length > 28 ? r.id.slice(0, 12) + "..." + r.id.slice(-12) : r.id;
  tr.innerHTML = `<td>${sw}</td><td title="${r.id}">${id}${r.index ? " #" + r.index : ""}</td>` +
    `<td class="status-${r.status}">${r.status}</td>` +
    `<td><div class="bar" title="${r.computed_tokens} of ${total} tokens computed">` +
    `<div class="prompt" style="width:${(100 * r.prompt_tokens / total).toFixed(1)}%"></div>` +
    `<div class="done" style="width:${(100 * Math.min(r.computed_tokens, known) / total).toFixed(1)}%;` +
    `background:${colour(r.slot) || "#7b8499"};opacity:.85"></div></div></td>` +
    `<td>${r.prompt_tokens}</td><td>${r.output_tokens} / ${r.max_tokens}</td><td class="blocks">${r.blocks}</td>` +
    `<td>${r.cached_tokens >= 0 ? r.cached_tokens : "-"}</td><td>${r.preemptions}</td>`;
  tr.dataset.status = r.status;
  return tr;
}
function drawRequests(cache) {
  const body = $("requests").tBodies[0];
  const rows = [...cache.running, ...cache.waiting].map(requestRow);
  if (!rows.length) {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td colspan="9" class="empty">no requests: the engine is idle</td>`;
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  const shown = cache.running.length + cache.waiting.length, all = cache.num_running + cache.num_waiting;
  setText("req-caption", `${cache.num_running} running, ${cache.num_waiting} waiting` + (shown < all ? ` (first ${shown} shown)` : ""));
}

// ---- the roofline ----------------------------------------------------------------------------------------
const SVG = "http://www.w3.org/2000/svg";
function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function drawRoofline(recent) {
  const svg = $("roofline"), W = 460, H = 320, L = 52, R = 12, T = 12, B = 34;
  const peak = recent.peak, pts = recent.points.filter((p) => p.ai > 0 && p.flops_per_s > 0);
  let x0 = 0.1, x1 = 1e4, yTop = 1e12;
  if (peak) { yTop = peak.flops * 2; x0 = Math.min(0.1, peak.ridge / 1e3); x1 = Math.max(1e3, peak.ridge * 100); }
  else if (pts.length) { yTop = Math.max(...pts.map((p) => p.flops_per_s)) * 4; }
  for (const p of pts) { x0 = Math.min(x0, p.ai / 2); x1 = Math.max(x1, p.ai * 2); }
  const yBot = yTop / 1e4;
  const lx0 = Math.log10(x0), lx1 = Math.log10(x1), ly0 = Math.log10(yBot), ly1 = Math.log10(yTop);
  const X = (x) => L + (W - L - R) * (Math.log10(x) - lx0) / (lx1 - lx0);
  const Y = (y) => H - B - (H - T - B) * (Math.log10(Math.max(y, yBot)) - ly0) / (ly1 - ly0);
  const parts = [];
  for (let e = Math.ceil(lx0); e <= Math.floor(lx1); e++) {
    parts.push(el("line", { x1: X(10 ** e), x2: X(10 ** e), y1: T, y2: H - B, class: "grid" }));
    parts.push(el("text", { x: X(10 ** e), y: H - B + 14, "text-anchor": "middle" }, si(10 ** e)));
  }
  for (let e = Math.ceil(ly0); e <= Math.floor(ly1); e++) {
    parts.push(el("line", { x1: L, x2: W - R, y1: Y(10 ** e), y2: Y(10 ** e), class: "grid" }));
    parts.push(el("text", { x: L - 6, y: Y(10 ** e) + 4, "text-anchor": "end" }, si(10 ** e)));
  }
  parts.push(el("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  parts.push(el("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
  parts.push(el("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, "arithmetic intensity (FLOP/byte)"));
  parts.push(el("text", { x: 12, y: (T + H - B) / 2, transform: `rotate(-90 12 ${(T + H - B) / 2})`, "text-anchor": "middle" },
                "achieved FLOP/s"));
  if (peak) {
    const xs = [x0, peak.ridge, x1];
    parts.push(el("polyline", { class: "roof", points: xs.map((x) => `${X(x)},${Y(Math.min(peak.flops, x * peak.bandwidth))}`).join(" ") }));
    parts.push(el("line", { x1: X(peak.ridge), x2: X(peak.ridge), y1: Y(peak.flops), y2: H - B, class: "ridge" }));
    parts.push(el("text", { x: X(peak.ridge) + 4, y: Y(peak.flops) - 4 }, `ridge ${si(peak.ridge)} FLOP/B`));
  } else {
    parts.push(el("text", { x: W - R, y: T + 12, "text-anchor": "end" }, "no peak declared: see docs/metrics.md"));
  }
  for (const p of pts) parts.push(el("circle", { cx: X(p.ai), cy: Y(p.flops_per_s), r: 3, class: "pt " + p.kind }));
  svg.replaceChildren(...parts);
  svg.dataset.points = String(pts.length);

  const rows = ["prefill", "decode", "mixed"].map((k) => {
    const s = recent.by_kind[k], tr = document.createElement("tr");
    tr.innerHTML = `<td><i class="dot ${k}"></i>${k}</td><td>${s.steps}</td><td>${secs(s.seconds)}</td>` +
      `<td>${si(s.flops_per_s)}</td><td>${s.arithmetic_intensity === null ? "-" : si(s.arithmetic_intensity)}</td>`;
    return tr;
  });
  $("kinds").tBodies[0].replaceChildren(...rows);
}

// ---- the cards -------------------------------------------------------------------------------------------
function drawCards(s) {
  const c = s.cache, r = s.recent;
  setText("model", s.model);
  setText("running-count", c.num_running);
  setText("waiting-count", c.num_waiting);
  setText("kv-usage", pct(c.used / c.num_blocks));
  setText("kv-used-of", `${c.used.toLocaleString()} of ${c.num_blocks.toLocaleString()} blocks`);
  setText("ttft", r.ttft_s.count ? `${secs(r.ttft_s.p50)} / ${secs(r.ttft_s.p90)}` : "-");
  setText("ttft-count", `${r.ttft_s.count} first tokens, last minute`);
  setText("tpot", r.tpot_s.count ? `${secs(r.tpot_s.p50)} / ${secs(r.tpot_s.p90)}` : "-");
  setText("tpot-count", `${r.tpot_s.count} finished, last minute`);
  setText("gen-rate", r.generation_tokens_per_s.toFixed(1));
  setText("prompt-rate", `prompt ${r.prompt_tokens_per_s.toFixed(1)} tok/s`);
  setText("mfu", pct(r.mfu_busy));
  setText("mbu", pct(r.mbu_busy));
  setText("busy", `engine busy ${pct(r.busy_fraction)} of the minute`);
  setText("peak-source", r.peak ? `peak ${si(r.peak.flops, "FLOP/s")}, ${si(r.peak.bandwidth, "B/s")}` : "no peak declared");
}

// ---- the loop --------------------------------------------------------------------------------------------
function render(s) {
  drawCards(s);
  drawPool(s.cache);
  drawRequests(s.cache);
  drawRoofline(s.recent);
  const phase = $("phase");
  phase.textContent = s.phase;
  phase.classList.toggle("bad", s.phase !== "ready");
  setText("updated", "updated " + new Date(s.time * 1000).toLocaleTimeString());
  document.body.dataset.updates = String(Number(document.body.dataset.updates) + 1);
}

async function tick() {
  try {
    const resp = await fetch("/dashboard/state", { cache: "no-store", credentials: "same-origin" });
    if (!resp.ok) {
      const body = await resp.json().catch(() => ({}));
      throw new Error(`${resp.status}: ${(body.error && body.error.message) || resp.statusText}`);
    }
    render(await resp.json());
  } catch (e) {
    const phase = $("phase");
    phase.textContent = "unreachable";
    phase.classList.add("bad");
    setText("updated", String(e.message || e));
  } finally {
    setTimeout(tick, REFRESH_MS);
  }
}
tick();

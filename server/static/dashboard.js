// kvserve dashboard: polls /dashboard/state and draws the block pool, the requests, the last minute's latency,
// throughput and each step's place on the roofline. Plain DOM and SVG, no library. The JSON is documented in
// docs/api.md; the numbers are defined in docs/metrics.md.
"use strict";

const REFRESH_MS = 1000;
const PALETTE = ["#5b8def", "#e5735c", "#57c785", "#d4a72c", "#b57edc", "#4cc3d9", "#ef7fb0", "#9ccc65",
                 "#f09a4a", "#7986cb", "#4db6ac", "#e57373", "#a1887f", "#90a4ae", "#ffd54f", "#64b5f6"];
const $ = (id) => document.getElementById(id);
const esc = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);  // ids go into HTML
const colour = (slot) => (slot >= 0 ? PALETTE[slot % PALETTE.length] : "");

function si(x, unit = "") {
  if (x === null || x === undefined || !isFinite(x)) return "-";
  const a = Math.abs(x);
  for (const [v, p] of [[1e15, "P"], [1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]]) {
    if (a >= v) return (x / v).toFixed(a / v >= 100 ? 0 : a / v >= 10 ? 1 : 2) + " " + p + unit;
  }
  return x.toFixed(a >= 100 ? 0 : a >= 10 ? 1 : 2) + (unit ? " " + unit : "");
}
function tick10(e) {  // a power of ten as an axis label: 0.01, 0.1, 1, 10, 100, 1k, 10k, 1M, ...
  if (e < 0) return (10 ** e).toFixed(-e);
  const names = ["", "k", "M", "G", "T", "P"], k = Math.floor(e / 3);
  return String(10 ** (e - 3 * k)) + names[k];
}
function secsPair(a, b) {  // "85 / 120 ms" or "10.3 / 10.4 s": one unit for both
  if (a === null || b === null) return "-";
  if (b < 1) return `${(a * 1e3).toFixed(a < 0.1 ? 1 : 0)} / ${(b * 1e3).toFixed(b < 0.1 ? 1 : 0)} ms`;
  return `${a.toFixed(a < 10 ? 2 : 1)} / ${b.toFixed(b < 10 ? 2 : 1)} s`;
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
    // a roughly 2:1 grid: big cells for a small pool, small ones for a big pool
    pool.style.setProperty("--cols", String(Math.max(16, Math.min(96, Math.round(Math.sqrt(2.4 * n))))));
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
  tr.innerHTML = `<td>${sw}</td><td title="${esc(r.id)}">${esc(id)}${r.index ? " #" + r.index : ""}</td>` +
    `<td class="status-${esc(r.status)}">${esc(r.status)}</td>` +
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
  const svg = $("roofline"), W = 460, H = 320, L = 62, R = 16, T = 14, B = 36;
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
    parts.push(el("text", { x: X(10 ** e), y: H - B + 15, "text-anchor": "middle" }, tick10(e)));
  }
  for (let e = Math.ceil(ly0); e <= Math.floor(ly1); e++) {
    parts.push(el("line", { x1: L, x2: W - R, y1: Y(10 ** e), y2: Y(10 ** e), class: "grid" }));
    parts.push(el("text", { x: L - 6, y: Y(10 ** e) + 4, "text-anchor": "end" }, tick10(e)));
  }
  parts.push(el("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  parts.push(el("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
  parts.push(el("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, "arithmetic intensity (FLOP/byte)"));
  parts.push(el("text", { x: 14, y: (T + H - B) / 2, transform: `rotate(-90 14 ${(T + H - B) / 2})`, "text-anchor": "middle" },
                "achieved FLOP/s"));
  if (peak) {
    const xs = [x0, peak.ridge, x1];
    parts.push(el("polyline", { class: "roof", points: xs.map((x) => `${X(x)},${Y(Math.min(peak.flops, x * peak.bandwidth))}`).join(" ") }));
    parts.push(el("line", { x1: X(peak.ridge), x2: X(peak.ridge), y1: Y(peak.flops), y2: H - B, class: "ridge" }));
    parts.push(el("text", { x: X(peak.ridge) + 5, y: Y(peak.flops) + 14 }, `ridge ${si(peak.ridge)} FLOP/B`));
    parts.push(el("text", { x: W - R, y: Y(peak.flops) - 5, "text-anchor": "end" }, `peak ${si(peak.flops, "FLOP/s")}`));
    const slopeX = Math.sqrt(x0 * peak.ridge);
    parts.push(el("text", { x: X(slopeX) + 6, y: Y(slopeX * peak.bandwidth) - 6 }, `${si(peak.bandwidth, "B/s")}`));
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
  setText("ttft", r.ttft_s.count ? secsPair(r.ttft_s.p50, r.ttft_s.p90) : "-");
  setText("ttft-count", `${r.ttft_s.count} first tokens, last min`);
  setText("tpot", r.tpot_s.count ? secsPair(r.tpot_s.p50, r.tpot_s.p90) : "-");
  setText("tpot-count", `${r.tpot_s.count} finished, last min`);
  setText("gen-rate", r.generation_tokens_per_s.toFixed(1));
  setText("prompt-rate", `prompt ${r.prompt_tokens_per_s.toFixed(1)} tok/s`);
  setText("mfu", pct(r.mfu_busy));
  setText("mbu", pct(r.mbu_busy));
  setText("busy", r.peak ? `of ${si(r.peak.flops, "FLOP/s")} peak` : "no peak declared");
  setText("peak-source", r.peak ? `of ${si(r.peak.bandwidth, "B/s")} peak` : "no peak declared");
  setText("busy-frac", `engine busy ${pct(r.busy_fraction)} of the last minute`);
  $("mfu").title = $("mbu").title = r.peak ? `peak: ${r.peak.source}; engine busy ${pct(r.busy_fraction)} of the minute` : "";
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

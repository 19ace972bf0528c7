/* tunesmith studio: live curves (uPlot + server-sent events) and the playground's streams.
   Everything the page shows comes from the server; this file only draws and listens. */
"use strict";

function csrfToken() {
  const m = document.querySelector('meta[name="csrf-token"]');
  return m ? m.content : "";
}

/* ---- live curves ---------------------------------------------------------------------- */
const SERIES_COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2"];

function setupCharts() {
  const root = document.getElementById("charts");
  if (!root) return;
  const data = JSON.parse(document.getElementById("points").textContent || "{}");
  const groups = {loss: k => k === "loss" || k.startsWith("loss/"),
                  val_loss: k => k.startsWith("val_"), lr: k => k === "lr",
                  tokens_per_s: k => k === "tokens_per_s"};
  const charts = {};
  window.studioCharts = charts;

  function draw(metric) {
    const fig = root.querySelector(`[data-metric="${metric}"]`);
    const keys = Object.keys(data).filter(groups[metric]).sort();
    const n = keys.reduce((a, k) => a + data[k].length, 0);
    fig.dataset.points = String(n);
    fig.querySelector(".nodata").hidden = n > 0;
    if (!n) return;
    const steps = [...new Set(keys.flatMap(k => data[k].map(p => p[0])))].sort((a, b) => a - b);
    const index = new Map(steps.map((s, i) => [s, i]));
    const cols = keys.map(k => { const c = new Array(steps.length).fill(null);
                                 data[k].forEach(p => { c[index.get(p[0])] = p[1]; }); return c; });
    const el = fig.querySelector(".plot");
    const old = charts[metric];
    if (old && old.keys.join() === keys.join()) { old.plot.setData([steps, ...cols]); return; }
    if (old) old.plot.destroy();
    const opts = {width: el.clientWidth || 420, height: 220, legend: {show: true},
                  scales: {x: {time: false}}, axes: [{label: "step"}, {}],
                  series: [{label: "step"}, ...keys.map((k, i) => ({
                    label: k, stroke: SERIES_COLORS[i % SERIES_COLORS.length], width: 2,
                    spanGaps: true, points: {show: steps.length < 40}}))]};
    charts[metric] = {keys, plot: new uPlot(opts, [steps, ...cols], el)};
  }
  Object.keys(groups).forEach(draw);

  if (root.dataset.live !== "yes") return;
  const since = root.dataset.count || "0";
  const es = new EventSource(`/studio/runs/${encodeURIComponent(root.dataset.run)}/events?since=${since}`);
  es.addEventListener("metrics", ev => {
    const fresh = JSON.parse(ev.data);
    for (const [k, pts] of Object.entries(fresh)) (data[k] = data[k] || []).push(...pts);
    Object.keys(groups).forEach(draw);
  });
  es.addEventListener("reset", () => { for (const k of Object.keys(data)) delete data[k]; });
  es.addEventListener("status", ev => showStatus(JSON.parse(ev.data)));
}

function fmtDuration(s) {
  if (s === null || s === undefined) return "—";
  s = Math.round(s);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor(s % 3600 / 60)).padStart(2, "0")} min`;
}

function showStatus(st) {
  const badge = document.querySelector("#run-status .badge");
  if (badge && badge.textContent !== st.status) {
    badge.textContent = st.status; badge.className = `badge s-${st.status}`;
  }
  const set = (id, v) => { const e = document.getElementById(id); if (e) e.textContent = v; };
  set("stat-step", st.step ?? "—");
  if (st.total) set("stat-total", st.total);
  set("stat-eta", fmtDuration(st.eta_s));
  if (st.best) set("stat-best", `${st.best.metric} ${Number(st.best.value).toPrecision(4)} @ step ${st.best.step}`);
  const box = document.getElementById("failure");
  if (box && st.reason && ["failed", "interrupted", "cancelled"].includes(st.status)) {
    box.hidden = false; set("failure-text", st.reason);
  }
}

/* ---- copy buttons on command blocks ---------------------------------------------------- */
function setupCopy() {
  document.querySelectorAll("pre[data-copy]").forEach(pre => {
    if (pre.dataset.ready) return;
    pre.dataset.ready = "1";
    const b = document.createElement("button");
    b.type = "button"; b.className = "copy"; b.textContent = "copy";
    b.addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(pre.textContent));
    pre.appendChild(b);
  });
}

document.addEventListener("DOMContentLoaded", () => { setupCharts(); setupCopy(); });
document.addEventListener("htmx:afterSwap", setupCopy);

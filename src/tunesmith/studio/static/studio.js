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
  const ACTIVE = ["queued", "running", "validating_files"];
  es.addEventListener("status", ev => {
    const st = JSON.parse(ev.data);
    showStatus(st);
    // a job that just finished: show the page the server now has (actions, events, model)
    if (ACTIVE.includes(root.dataset.status) && !ACTIVE.includes(st.status)) {
      es.close(); setTimeout(() => location.reload(), 300);
    }
    root.dataset.status = st.status;
  });
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
  if (st.total) set("stat-total", ` / ${st.total}`);
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

/* ---- playground: two streamed chats over /v1/chat/completions --------------------------- */
function setupPlayground() {
  const form = document.getElementById("play-form");
  if (!form) return;
  let state = {};
  try { state = JSON.parse(document.getElementById("play-saved").textContent || "{}"); } catch (e) { state = {}; }
  const sides = ["a", "b"];
  state.history = state.history || {a: [], b: []};
  if (state.models) sides.forEach(s => { if (state.models[s]) document.getElementById(`model-${s}`).value = state.models[s]; });
  if (state.settings) {
    document.getElementById("play-system").value = state.settings.system || "";
    document.getElementById("play-temperature").value = state.settings.temperature ?? "0";
    document.getElementById("play-max-tokens").value = state.settings.max_tokens ?? "64";
  }
  const served = new URLSearchParams(location.search).get("served");
  if (served) document.getElementById("model-b").value = served;

  function render(side) {
    const box = document.getElementById(`transcript-${side}`);
    box.replaceChildren(...state.history[side].map(m => {
      const d = document.createElement("div");
      d.className = `msg ${m.role}${m.error ? " error" : ""}`;
      d.textContent = m.content;
      return d;
    }));
  }
  sides.forEach(render);

  function save() {
    state.models = {a: document.getElementById("model-a").value, b: document.getElementById("model-b").value};
    state.settings = {system: document.getElementById("play-system").value,
                      temperature: document.getElementById("play-temperature").value,
                      max_tokens: document.getElementById("play-max-tokens").value};
    fetch("/studio/play/save", {method: "POST", headers: {"Content-Type": "application/json",
          "X-CSRF-Token": csrfToken()}, body: JSON.stringify(state), credentials: "same-origin"});
  }

  function request(side) {
    const sys = document.getElementById("play-system").value.trim();
    const msgs = state.history[side].filter(m => !m.error).map(m => ({role: m.role, content: m.content}));
    return {model: document.getElementById(`model-${side}`).value.trim(),
            messages: sys ? [{role: "system", content: sys}, ...msgs] : msgs,
            temperature: Number(document.getElementById("play-temperature").value || 0),
            max_tokens: parseInt(document.getElementById("play-max-tokens").value || "64", 10),
            stream: true};
  }

  async function stream(side, body) {
    const out = {role: "assistant", content: ""};
    state.history[side].push(out);
    render(side);
    const node = document.getElementById(`transcript-${side}`).lastChild;
    try {
      const resp = await fetch("/v1/chat/completions", {method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": csrfToken()}, body: JSON.stringify(body)});
      if (!resp.ok) {
        let msg = `HTTP ${resp.status}`;
        try { const j = await resp.json(); msg = j.error ? j.error.message : msg; } catch (e) { /* not JSON */ }
        throw new Error(msg);
      }
      const reader = resp.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += dec.decode(value, {stream: true});
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
          if (!block.startsWith("data: ")) continue;
          const data = block.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) { out.content += delta.content; node.textContent = out.content; }
        }
      }
    } catch (err) {
      out.error = true;
      out.content = `Error: ${err.message}\n  where: model ${side.toUpperCase()} (${body.model || "none"})\n  fix: pick a model listed by GET /v1/models, or serve a run below`;
      node.className = "msg assistant error"; node.textContent = out.content;
    }
  }

  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const prompt = document.getElementById("play-prompt").value;
    if (!prompt.trim()) return;
    const button = document.getElementById("play-send");
    button.disabled = true;
    sides.forEach(s => { state.history[s].push({role: "user", content: prompt}); render(s); });
    const bodies = Object.fromEntries(sides.map(s => [s, request(s)]));
    document.getElementById("play-cmd").textContent = sides.map(s =>
      `curl -N ${location.origin}/v1/chat/completions -H 'Content-Type: application/json'` +
      (document.querySelector("button[hx-post='/studio/logout']") ? " -H 'Authorization: Bearer KEY'" : "") +
      ` -d '${JSON.stringify(bodies[s]).replace(/'/g, "'\\''")}'`).join("\n\n");
    document.getElementById("play-prompt").value = "";
    save();
    await Promise.all(sides.map(s => stream(s, bodies[s])));
    button.disabled = false;
    document.body.dataset.playDone = String(Number(document.body.dataset.playDone || 0) + 1);
    save();
  });
  document.getElementById("play-clear").addEventListener("click", () => {
    state.history = {a: [], b: []}; sides.forEach(render); save();
  });
}

document.addEventListener("DOMContentLoaded", () => { setupCharts(); setupCopy(); setupPlayground(); });
document.addEventListener("htmx:afterSwap", setupCopy);

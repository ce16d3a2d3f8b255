// The vitprune search dashboard: polls /api/state every few seconds and redraws what changed.
// Plain JavaScript and plotly.js; the data is assembled by vitprune/search/dashboard_data.py.
"use strict";

const POLL_MS = 3000;
const STATUS_COLOR = {
  COMPLETED: "#2f6db5", FAILED: "#c8414b", ABANDONED: "#8c959f", INTERRUPTED: "#8c959f",
  RUNNING: "#d98e04", QUEUED: "#b1b8c0",
};
const OVER_LIMIT = "#e07b39";
const BEST = "#1a7f37";
const NODE_SYMBOL = { Sobol: "circle", GP: "diamond" };
const METRIC = {
  macs: { name: "MACs", axis: "MACs (% of dense)" },
  params: { name: "params", axis: "parameters (% of dense)" },
  latency_ms: { name: "latency", axis: "measured latency (ms)" },
};
const DIMENSIONS = [  // the bars of the structure chart: key in layer_structure, label, colour
  ["heads", "heads", "#2f6db5"],
  ["qk", "q/k width", "#7aa6db"],
  ["v", "v width", "#54a24b"],
  ["mlp", "MLP neurons", "#e0a030"],
  ["tokens", "tokens kept", "#9d7ac7"],
  ["embed", "embedding width", "#8c959f"],  // drawn only when the trial narrows the residual stream
];
const PLOT_CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

let state = null;         // the last /api/state document
let stateTag = null;      // its ETag: nothing is redrawn while it does not change
let chosen = null;        // the trial the user clicked, or null for the default (the best)
let axisChoice = null;    // the cost the user chose for the x axis, or null for the search's own
let shownKey = null;      // "trial:status:trials in the snapshot" of the structure on screen

// ------------------------------------------------------------------ formatting
const $ = (id) => document.getElementById(id);
const percent = (x, digits = 1) => (x == null ? "–" : `${(100 * x).toFixed(digits)} %`);
const accuracy = (x) => percent(x, 2);

function count(x) {
  if (x == null) return "–";
  if (x >= 1e9) return `${(x / 1e9).toFixed(2)} G`;
  if (x >= 1e6) return `${(x / 1e6).toFixed(2)} M`;
  if (x >= 1e3) return `${(x / 1e3).toFixed(1)} k`;
  return String(Math.round(x));
}

function duration(seconds) {
  if (seconds == null) return "–";
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

function escapeHtml(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const costAxis = () => axisChoice || state.cost_axis;

function costOf(row, axis = costAxis()) {
  if (axis === "latency_ms") return row.latency_ms ?? null;
  const ratio = row[`${axis}_ratio`];
  return ratio == null ? null : 100 * ratio;
}

function structureText(s, dense) {
  if (!s || s.heads == null) return "";
  const parts = [`heads ${s.heads}${dense ? "/" + dense.heads_total : ""}`, `q/k ${s.qk_dim}`, `v ${s.v_dim}`,
    `MLP ${percent(s.mlp_ratio, 0)}`, `tokens ${s.tokens_final}`];
  if (dense && s.embed_dim != null && s.embed_dim < dense.embed_dim) parts.push(`width ${s.embed_dim}/${dense.embed_dim}`);
  if (s.attn_removed) parts.push(`−${s.attn_removed} attention`);
  if (s.act_removed) parts.push(`−${s.act_removed} GELU`);
  return parts.join(" · ");
}

function hoverText(row) {
  const lines = [`<b>trial ${row.trial}</b> (${row.node || "?"}, ${row.status.toLowerCase()})`];
  if (row.accuracy != null) lines.push(`accuracy ${accuracy(row.accuracy)}`);
  if (row.macs_ratio != null) lines.push(`MACs ${percent(row.macs_ratio)} of dense (${count(row.macs)})`);
  if (row.params_ratio != null) lines.push(`params ${percent(row.params_ratio)} of dense (${count(row.params)})`);
  if (row.latency_ms != null) lines.push(`latency ${row.latency_ms.toFixed(2)} ms`);
  if (row.feasible === false) lines.push("over the latency limit");
  if (row.reason) lines.push(escapeHtml(row.reason).slice(0, 160));
  return lines.join("<br>");
}

// ------------------------------------------------------------------ polling
async function poll() {
  try {
    const response = await fetch("/api/state", { cache: "no-cache" });
    if (!response.ok) throw new Error(`the dashboard answered ${response.status}`);
    const tag = response.headers.get("ETag");
    const next = await response.json();
    $("connection").hidden = true;
    if (tag !== stateTag || tag == null) {
      stateTag = tag;
      state = next;
      render();
    } else {
      renderStatus();  // the ETA counts down between changes
    }
  } catch (error) {
    $("connection").hidden = false;
    $("connection").textContent = `Cannot reach the dashboard (${error.message}); retrying…`;
  }
  $("footer").textContent = `Updated ${new Date().toLocaleTimeString()} · every ${POLL_MS / 1000} s`;
  setTimeout(poll, POLL_MS);
}

function render() {
  renderHeader();
  renderStatus();
  renderCostPlot();
  renderProgressPlot();
  renderTable();
  showStructure();
}

const completed = () => state.trials.filter((row) => row.status === "COMPLETED" && row.accuracy != null);
const findRow = (trial) => state.trials.find((row) => row.trial === trial);

function defaultTrial() {
  if (state.best != null) return state.best;
  const front = state.trials.filter((row) => state.front.includes(row.trial));
  const pool = front.length ? front : completed();
  if (!pool.length) return null;
  return pool.reduce((a, b) => (b.accuracy > a.accuracy ? b : a)).trial;
}

function select(trial) {
  chosen = trial;
  history.replaceState(null, "", `#trial=${trial}`);  // a link to this view, kept across reloads
  renderTable();
  renderCostPlot();
  renderProgressPlot();
  showStructure();
}

// ------------------------------------------------------------------ header and status
function budgetText() {
  const b = state.budget;
  if (!b.metric) return "budget not known yet";
  const name = METRIC[b.metric].name;
  if (b.limit == null) return `${name} ≤ ${b.requested}`;
  if (b.metric === "latency_ms") return `latency ≤ ${b.limit.toFixed(2)} ms (${percent(b.share, 0)} of dense)`;
  return `${name} ≤ ${percent(b.share, 0)} of dense (${count(b.limit)})`;
}

function renderHeader() {
  $("run-name").textContent = state.run;
  document.title = `vitprune · ${state.run}`;
  const objective = state.pareto ? "Pareto front of accuracy and latency" : "maximise accuracy";
  const facts = [state.model, objective, budgetText()];
  if (state.dense && state.dense.test_accuracy != null) facts.push(`dense test accuracy ${accuracy(state.dense.test_accuracy)}`);
  $("run-facts").textContent = facts.filter(Boolean).join(" · ");
}

function eta(progress) {  // progress.json's ETA was computed when it was written
  const since = progress.updated ? Date.now() / 1000 - progress.updated : 0;
  return Math.max(0, progress.eta_s - Math.max(0, since));
}

function suggestionText() {
  const progress = state.progress;
  if (progress && progress.suggest_s != null) return `${progress.suggest_s.toFixed(1)} s this session`;
  const seconds = state.trials.map((row) => row.suggest_s).filter((s) => s != null);
  return seconds.length ? `${seconds.reduce((a, b) => a + b, 0).toFixed(1)} s in all` : "–";
}

function renderStatus() {
  const phase = state.phase;
  const current = phase ? phase.phase : null;
  const stopped = current === "failed" || current === "interrupted";
  const ended = stopped || current === "finished";
  const order = state.phases;
  const history = phase ? phase.history.map((entry) => entry.phase) : [];
  const last = stopped ? history.filter((name) => order.includes(name)).pop() : current;
  const at = order.indexOf(last);
  $("phases").innerHTML = order.map((name, i) => {
    let cls = current === "finished" || i < at ? "done" : "";
    if (i === at && current !== "finished") cls = stopped ? "failed" : "current";
    return `<li class="${cls}">${escapeHtml(i === at && stopped ? `${name}: ${current}` : name)}</li>`;
  }).join("");

  const progress = state.progress;
  const planned = state.planned;
  const endedTrials = state.trials.filter((row) => ["COMPLETED", "FAILED", "ABANDONED"].includes(row.status)).length;
  let done = 0;
  let total = null;
  let text;
  if (!phase) {
    text = "Waiting for the search to start (no phase.json yet).";
  } else if (current === "trials" || (ended && state.trials.length)) {
    done = endedTrials;
    total = planned;
    text = `${done} of ${planned ?? "?"} trials ended` + (current === "finished" ? "; the search is finished" : "");
  } else if (!ended) {
    done = phase.done || 0;
    total = phase.total;
    text = `${current}: ${done}${total ? " of " + total : ""} ${phase.unit || ""}`;
  } else {
    text = `The search ${current} before its trials.`;
  }
  $("bar-fill").style.width = `${total ? Math.min(100, (100 * done) / total) : 0}%`;
  $("progress-text").textContent = text;

  const rows = state.trials;
  const running = rows.filter((row) => row.status === "RUNNING").map((row) => row.trial);
  const failed = rows.filter((row) => ["FAILED", "ABANDONED"].includes(row.status)).length;
  const best = state.best != null ? findRow(state.best) : null;
  const figures = [
    ["completed", rows.length ? `${completed().length} of ${planned ?? "?"}` : "–"],
    ["running", running.length ? `${running.length} (trial ${running.join(", ")})` : "–"],
    ["failed", failed ? String(failed) : "none"],
    ["ETA", !ended && progress && progress.eta_s != null ? `≈ ${duration(eta(progress))}` : "–"],
    ["suggestion time", suggestionText()],
  ];
  if (state.pareto) figures.push(["Pareto front", state.front.length ? `${state.front.length} trials` : "–"]);
  else figures.push(["best", best ? `${accuracy(best.accuracy)} (trial ${best.trial})` : "–"]);
  if (phase && phase.updated) figures.push(["last news", new Date(phase.updated * 1000).toLocaleTimeString()]);
  if (state.snapshot.loading && !state.snapshot.loaded) figures.push(["Ax experiment", "loading…"]);
  $("figures").innerHTML = figures
    .map(([name, value]) => `<div><dt>${name}</dt><dd>${escapeHtml(value)}</dd></div>`).join("");
}

// ------------------------------------------------------------------ plots
function placeholder(id, message) {
  const div = $(id);
  if (div.classList.contains("js-plotly-plot")) Plotly.purge(div);
  delete div.dataset.clicks;  // purge removed the click handler
  div.innerHTML = `<div class="empty">${escapeHtml(message)}</div>`;
}

function draw(id, traces, layout, onClick) {
  const div = $(id);
  if (!div.classList.contains("js-plotly-plot")) div.innerHTML = "";
  const base = {
    margin: { l: 64, r: 16, t: 24, b: 40 }, font: { size: 12 }, hovermode: "closest",
    legend: { orientation: "h", y: -0.2, yanchor: "top", x: 0 }, plot_bgcolor: "#fff", paper_bgcolor: "#fff",
  };
  Plotly.react(div, traces, Object.assign(base, layout), PLOT_CONFIG);
  if (onClick && !div.dataset.clicks) {
    div.dataset.clicks = "1";
    div.on("plotly_click", (event) => {
      const trial = event.points[0] && event.points[0].customdata;
      if (typeof trial === "number") select(trial);
    });
  }
}

function waitingMessage() {
  if (!state.phase) return "The search has not started yet.";
  if (!["trials", "selection", "finished", "failed", "interrupted"].includes(state.phase.phase)) {
    return `The search is preparing (${state.phase.phase}); trials come next.`;
  }
  return "No trial has finished yet.";
}

function markerTrace(rows, name, color, extra = {}) {
  return Object.assign({
    type: "scatter", mode: "markers", name,
    x: rows.map((row) => costOf(row)), y: rows.map((row) => 100 * row.accuracy),
    customdata: rows.map((row) => row.trial), text: rows.map(hoverText), hovertemplate: "%{text}<extra></extra>",
    marker: { color, size: 9, symbol: rows.map((row) => NODE_SYMBOL[row.node] || "circle"),
      line: { color: "#fff", width: 1 } },
  }, extra);
}

function ring(row, name, color, size) {
  return {
    type: "scatter", mode: "markers", name, x: [costOf(row)], y: [100 * row.accuracy], customdata: [row.trial],
    hoverinfo: "skip", marker: { symbol: "circle-open", size, color, line: { width: 2.5 } },
  };
}

function renderAxisChoice() {
  for (const button of document.querySelectorAll("#axis-choice button")) {
    const axis = button.dataset.axis;
    button.classList.toggle("current", axis === costAxis());
    button.textContent = METRIC[axis].name + (axis === state.cost_axis ? " (budget)" : "");
    if (state.pareto && axis === "latency_ms") button.textContent = "latency (objective)";
  }
}

function renderCostPlot() {
  renderAxisChoice();
  const axis = costAxis();
  const measured = completed().filter((row) => costOf(row) != null);
  if (!measured.length) return placeholder("cost-plot", waitingMessage());
  const latency = axis === "latency_ms";
  const traces = [];
  const front = (state.fronts[axis] || []).map(findRow).filter((row) => row && costOf(row) != null && row.accuracy != null)
    .sort((a, b) => costOf(a) - costOf(b));
  if (front.length) {
    traces.push({ type: "scatter", mode: "lines+markers", name: state.pareto && latency ? "Pareto front (Ax)" : "Pareto front",
      x: front.map((r) => costOf(r)), y: front.map((r) => 100 * r.accuracy), hoverinfo: "skip",
      line: { shape: "hv", color: "#57606a", width: 1.5 }, marker: { symbol: "circle-open", size: 14, color: "#57606a" } });
  }
  for (const node of ["Sobol", "GP", null]) {
    const rows = measured.filter((row) => row.feasible && (row.node || null) === node);
    if (rows.length) traces.push(markerTrace(rows, node ? `${node} trial` : "trial", STATUS_COLOR.COMPLETED));
  }
  const over = measured.filter((row) => row.feasible === false);
  if (over.length) traces.push(markerTrace(over, "over the latency limit", OVER_LIMIT));
  const best = state.best != null ? findRow(state.best) : null;
  if (best && costOf(best) != null) traces.push(ring(best, `best (trial ${best.trial})`, BEST, 17));
  const shown = chosen != null ? findRow(chosen) : null;
  if (shown && costOf(shown) != null && shown.accuracy != null && shown !== best) {
    traces.push(ring(shown, `selected (trial ${shown.trial})`, "#1f2328", 19));
  }

  const shapes = [];
  const annotations = [];
  const dense = state.dense;
  const denseX = latency ? dense && dense.latency_ms : 100;
  if (dense && dense.test_accuracy != null && denseX != null) {
    traces.push({ type: "scatter", mode: "markers", name: "dense model (test accuracy)", x: [denseX],
      y: [100 * dense.test_accuracy], marker: { symbol: "star", size: 15, color: "#1f2328" },
      hovertemplate: `<b>dense model</b><br>test accuracy ${accuracy(dense.test_accuracy)}<br>` +
        `${latency ? denseX.toFixed(2) + " ms" : "100 % of dense"}<br>(trials show search-val accuracy)<extra></extra>` });
  } else if (dense && dense.test_accuracy != null) {
    shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, y0: 100 * dense.test_accuracy, y1: 100 * dense.test_accuracy,
      line: { color: "#1f2328", width: 1, dash: "dot" } });
    annotations.push({ xref: "paper", x: 0, y: 100 * dense.test_accuracy, text: "dense test accuracy",
      showarrow: false, xanchor: "left", yanchor: "bottom", font: { size: 11, color: "#57606a" } });
  }
  const b = state.budget;
  const limitX = b.limit == null || b.metric !== axis ? null : latency ? b.limit : 100 * b.share;
  if (limitX != null) {
    shapes.push({ type: "line", yref: "paper", y0: 0, y1: 1, x0: limitX, x1: limitX,
      line: { color: "#c8414b", width: 1.5, dash: "dash" } });
    annotations.push({ yref: "paper", y: 1, x: limitX, text: `budget ${latency ? limitX.toFixed(2) + " ms" : limitX.toFixed(0) + " %"}`,
      textangle: -90, showarrow: false, xanchor: "left", yanchor: "top", font: { size: 11, color: "#c8414b" } });
  }
  const unmeasured = state.trials.filter((row) => row.status !== "COMPLETED" && row.status !== "QUEUED");
  if (unmeasured.length) {
    const by = {};
    for (const row of unmeasured) by[row.status.toLowerCase()] = (by[row.status.toLowerCase()] || 0) + 1;
    annotations.push({ xref: "paper", yref: "paper", x: 1, y: 0, xanchor: "right", yanchor: "bottom", showarrow: false,
      text: `not measured: ${Object.entries(by).map(([s, n]) => `${n} ${s}`).join(", ")} (see the table)`,
      font: { size: 11, color: "#656d76" } });
  }
  draw("cost-plot", traces, {
    xaxis: { title: { text: METRIC[axis].axis }, ticksuffix: latency ? "" : " %", zeroline: false, gridcolor: "#eef1f4" },
    yaxis: { title: { text: "search-val accuracy (%)" }, ticksuffix: " %", gridcolor: "#eef1f4" },
    shapes, annotations,
  }, true);
}

function renderProgressPlot() {
  const rows = state.trials.filter((row) => row.status !== "QUEUED");
  const measured = completed();
  if (!measured.length && !rows.length) return placeholder("progress-plot", waitingMessage());
  const values = measured.map((row) => 100 * row.accuracy);
  const lo = values.length ? Math.min(...values) : 0;
  const hi = values.length ? Math.max(...values) : 100;
  const pad = Math.max(0.5, 0.08 * (hi - lo));
  const bottom = lo - 2 * pad;  // a strip under the measured trials for those without accuracy
  const traces = [];
  const series = state.best_so_far;
  if (series.length) {
    const lastTrial = Math.max(...rows.map((row) => row.trial));
    traces.push({ type: "scatter", mode: "lines", name: "best so far", line: { shape: "hv", color: BEST, width: 2 },
      x: [...series.map((p) => p[0]), lastTrial], y: [...series.map((p) => 100 * p[1]), 100 * series[series.length - 1][1]],
      hoverinfo: "skip" });
  }
  for (const node of ["Sobol", "GP", null]) {
    const group = measured.filter((row) => (row.node || null) === node);
    if (!group.length) continue;
    traces.push({
      type: "scatter", mode: "markers", name: node ? `${node} trial` : "trial",
      x: group.map((row) => row.trial), y: group.map((row) => 100 * row.accuracy),
      customdata: group.map((row) => row.trial), text: group.map(hoverText), hovertemplate: "%{text}<extra></extra>",
      marker: { symbol: NODE_SYMBOL[node] || "circle", size: 9, line: { color: "#fff", width: 1 },
        color: group.map((row) => (row.feasible ? STATUS_COLOR.COMPLETED : OVER_LIMIT)) },
    });
  }
  for (const [status, symbol, label] of [["RUNNING", "hourglass", "running"], ["FAILED", "x", "failed"],
    ["ABANDONED", "x", "abandoned"], ["INTERRUPTED", "x", "interrupted"]]) {
    const group = rows.filter((row) => row.status === status);
    if (!group.length) continue;
    traces.push({
      type: "scatter", mode: "markers", name: label, x: group.map((row) => row.trial), y: group.map(() => bottom + pad / 2),
      customdata: group.map((row) => row.trial), text: group.map(hoverText), hovertemplate: "%{text}<extra></extra>",
      marker: { symbol, size: 10, color: STATUS_COLOR[status] },
    });
  }
  const shapes = [];
  const annotations = [];
  const firstGp = measured.concat(rows).filter((row) => row.node === "GP").map((row) => row.trial);
  if (firstGp.length) {
    const x = Math.min(...firstGp) - 0.5;
    shapes.push({ type: "line", yref: "paper", y0: 0, y1: 1, x0: x, x1: x, line: { color: "#8c959f", dash: "dot", width: 1 } });
    annotations.push({ yref: "paper", y: 1, x, text: "GP from here", showarrow: false, xanchor: "left", yanchor: "top",
      font: { size: 11, color: "#57606a" } });
  }
  const shown = chosen != null ? findRow(chosen) : null;
  if (shown && shown.accuracy != null) {
    traces.push({ type: "scatter", mode: "markers", name: `selected (trial ${shown.trial})`, x: [shown.trial],
      y: [100 * shown.accuracy], hoverinfo: "skip", marker: { symbol: "circle-open", size: 19, color: "#1f2328", line: { width: 2.5 } } });
  }
  draw("progress-plot", traces, {
    xaxis: { title: { text: "trial" }, dtick: rows.length > 30 ? undefined : 1, gridcolor: "#eef1f4", zeroline: false,
      range: [-0.6, Math.max(...rows.map((row) => row.trial), 1) + 0.6] },
    yaxis: { title: { text: "search-val accuracy (%)" }, ticksuffix: " %", range: [bottom, hi + pad], gridcolor: "#eef1f4" },
    shapes, annotations,
  }, true);
}

// ------------------------------------------------------------------ structure of one trial
async function showStructure() {
  const trial = chosen != null ? chosen : defaultTrial();
  if (trial == null) {
    shownKey = null;
    $("structure-title").textContent = "Structure per layer";
    return placeholder("structure-plot", waitingMessage());
  }
  const row = findRow(trial);
  // Ax knows running trials' points, once a snapshot written after they started is loaded
  const key = `${trial}:${row ? row.status : "?"}:${state.snapshot.trials}`;
  if (key === shownKey) return;
  shownKey = key;
  try {
    const response = await fetch(`/api/trial/${trial}`, { cache: "no-cache" });
    if (!response.ok) throw new Error(`trial ${trial}: the dashboard answered ${response.status}`);
    renderStructure(await response.json());
  } catch (error) {
    shownKey = null;
    placeholder("structure-plot", error.message);
  }
}

function renderStructure(detail) {
  const which = detail.trial === state.best ? " (best)" : state.front.includes(detail.trial) ? " (on the front)" : "";
  $("structure-title").textContent = `Structure per layer · trial ${detail.trial}${which}`;
  const m = detail.metrics || {};
  const facts = [];
  if (m.accuracy != null) facts.push(`accuracy ${accuracy(m.accuracy)}`);
  const row = findRow(detail.trial);
  if (row && row.macs_ratio != null) facts.push(`MACs ${percent(row.macs_ratio)} of dense`);
  if (row && row.params_ratio != null) facts.push(`params ${percent(row.params_ratio)}`);
  if (m.latency_ms != null) facts.push(`latency ${m.latency_ms.toFixed(2)} ms`);
  if (m.finetune_seconds != null) facts.push(`fine-tuned in ${duration(m.finetune_seconds)}`);
  let note = facts.join(" · ");
  if (detail.source === "decoded") note = `Trial ${detail.trial} is running: the structure its point decodes to (the trial fine-tunes it now).`;
  $("structure-note").textContent = note || "What each layer keeps, as a share of the dense layer.";
  if (!detail.layers || !detail.dense) {
    const why = detail.reason ? `Trial ${detail.trial} ${detail.status.toLowerCase()}: ${detail.reason}`
      : `Trial ${detail.trial} is ${String(detail.status).toLowerCase()}; its structure is known once it ends.`;
    return placeholder("structure-plot", why);
  }
  const layers = detail.layers;
  const x = layers.map((layer) => layer.layer);
  const narrowed = layers.some((layer) => layer.embed < detail.dense.embed);
  const dimensions = DIMENSIONS.filter(([key]) => key !== "embed" || narrowed);
  const traces = dimensions.map(([key, label, color]) => ({
    type: "bar", name: label, x, marker: { color },
    y: layers.map((layer) => (100 * layer[key]) / detail.dense[key]),
    customdata: layers.map((layer) => [layer[key], detail.dense[key]]),
    hovertemplate: `layer %{x}: ${label} %{customdata[0]} of %{customdata[1]} (%{y:.0f} %)<extra></extra>`,
  }));
  const marks = [["attention", "attention removed", "x", "#c8414b", 112], ["activation", "GELU removed", "triangle-down", "#8250df", 106]];
  for (const [key, label, symbol, color, y] of marks) {
    const removed = layers.filter((layer) => !layer[key]);
    if (!removed.length) continue;
    traces.push({ type: "scatter", mode: "markers", name: label, x: removed.map((layer) => layer.layer),
      y: removed.map(() => y), marker: { symbol, size: 11, color }, hovertemplate: `layer %{x}: ${label}<extra></extra>` });
  }
  draw("structure-plot", traces, {
    barmode: "group", bargap: 0.25,
    xaxis: { title: { text: "layer" }, dtick: 1, zeroline: false },
    yaxis: { title: { text: "kept (% of dense)" }, range: [0, 118], tickvals: [0, 25, 50, 75, 100], ticksuffix: " %", gridcolor: "#eef1f4" },
    shapes: [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: 100, y1: 100, line: { color: "#8c959f", width: 1, dash: "dot" } }],
  }, false);
}

// ------------------------------------------------------------------ table
function renderTable() {
  const shown = chosen != null ? chosen : defaultTrial();
  const rows = [...state.trials].sort((a, b) => b.trial - a.trial);
  $("trials").querySelector("tbody").innerHTML = rows.map((row) => {
    const marks = (row.trial === state.best ? ' <span class="mark" title="best feasible trial">★</span>' : "") +
      (state.pareto && state.front.includes(row.trial) ? ' <span class="mark" title="on the Pareto front">◆</span>' : "");
    return `<tr data-trial="${row.trial}" class="${row.trial === shown ? "selected" : ""}">
      <td class="num">${row.trial}${marks}</td>
      <td><span class="badge ${row.status.toLowerCase()}">${row.status.toLowerCase()}</span></td>
      <td>${escapeHtml(row.node || "–")}</td>
      <td class="num">${accuracy(row.accuracy)}</td>
      <td class="num">${percent(row.macs_ratio)}</td>
      <td class="num">${percent(row.params_ratio)}</td>
      <td class="num">${row.latency_ms == null ? "–" : row.latency_ms.toFixed(2) + " ms"}</td>
      <td class="structure">${escapeHtml(structureText(row.structure, state.dense))}</td>
      <td class="num">${row.budget_ratio == null ? "–" : percent(row.budget_ratio)}</td>
      <td class="num">${duration(row.finetune_seconds)}</td>
      <td class="reason">${escapeHtml(row.reason || "")}</td>
    </tr>`;
  }).join("") || `<tr><td colspan="11" class="muted">${escapeHtml(waitingMessage())}</td></tr>`;
}

document.addEventListener("DOMContentLoaded", () => {
  const linked = /^#trial=(\d+)$/.exec(location.hash);
  if (linked) chosen = Number(linked[1]);
  for (const button of document.querySelectorAll("#axis-choice button")) {
    button.addEventListener("click", () => {
      axisChoice = button.dataset.axis;
      if (state) renderCostPlot();
    });
  }
  $("trials").querySelector("tbody").addEventListener("click", (event) => {
    const tr = event.target.closest("tr[data-trial]");
    if (tr) select(Number(tr.dataset.trial));
  });
  poll();
});

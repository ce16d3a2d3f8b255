// Ax's own analyses of the search: computed by the dashboard on demand (it takes a while), then
// drawn here with the page's one copy of plotly.js. Cards that failed are left out by the server.
"use strict";

const POLL_MS = 3000;
let shown = null;  // when the cards on screen were computed
const $ = (id) => document.getElementById(id);

function escapeHtml(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

async function load() {
  let document_;
  try {
    const response = await fetch("/api/analyses", { cache: "no-cache" });
    if (!response.ok) throw new Error(`the dashboard answered ${response.status}`);
    document_ = await response.json();
  } catch (error) {
    $("analyses-status").textContent = `Cannot reach the dashboard (${error.message}); retrying…`;
    setTimeout(load, POLL_MS);
    return;
  }
  if (document_.status === "none") {
    $("analyses-status").textContent = "No trial has ended yet: Ax's analyses need at least one. This page checks again every few seconds.";
    setTimeout(load, POLL_MS);
  } else if (document_.status === "error") {
    $("analyses-status").textContent = `Ax could not analyse this experiment (${document_.error}).`;
  } else if (!document_.cards) {
    $("analyses-status").textContent = "Ax is computing its analyses (it fits its model: this can take a minute)…";
    setTimeout(load, POLL_MS);
  } else {
    render(document_);
    if (document_.status === "computing") setTimeout(load, POLL_MS);  // a newer experiment is being analysed
  }
}

function render(result) {
  const when = new Date(result.computed * 1000).toLocaleTimeString();
  $("analyses-status").textContent =
    `Computed by Ax at ${when} for ${result.trials} trials, in ${result.seconds} s` +
    (result.status === "computing" ? "; the search has moved on, recomputing…" : ". Reload the page to bring them up to date.");
  if (result.computed === shown) return;
  shown = result.computed;
  const main = $("cards");
  for (const div of main.querySelectorAll(".js-plotly-plot")) Plotly.purge(div);
  main.innerHTML = "";
  result.cards.forEach((card, i) => {
    const section = document.createElement("section");
    section.className = "panel card" + (card.figure || card.html ? "" : " wide");
    const status = card.status ? ` <span class="badge ${escapeHtml(card.status)}">${escapeHtml(card.status)}</span>` : "";
    section.innerHTML = `<h2>${escapeHtml(card.title)}${status}</h2><div class="subtitle">${card.subtitle}</div>`;
    const body = document.createElement("div");
    body.className = "body";
    section.appendChild(body);
    if (card.html && card.html.includes("<table")) section.classList.add("wide");
    main.appendChild(section);
    if (card.figure) {
      body.id = `figure-${i}`;
      body.classList.add("figure");
      const layout = Object.assign({}, card.figure.layout, { autosize: true });
      Plotly.newPlot(body, card.figure.data, layout, { displaylogo: false, responsive: true });
    } else if (card.html) {
      body.innerHTML = card.html;  // tables and markdown rendered by the server, escaped there
    }
  });
  const unavailable = $("unavailable");
  unavailable.hidden = !result.unavailable.length;
  unavailable.querySelector("ul").innerHTML = result.unavailable
    .map((entry) => `<li><b>${escapeHtml(entry.title)}</b>: <span class="muted">${escapeHtml(entry.why)}</span></li>`).join("");
  $("left-out").textContent = result.left_out.length
    ? `Left out (Ax could not compute them; one line each in the dashboard's log): ${result.left_out.map((e) => e.title).join(", ")}.`
    : "";
}

document.addEventListener("DOMContentLoaded", load);

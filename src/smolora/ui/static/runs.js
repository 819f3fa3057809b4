// Runs view: the training queue (queued, running and past jobs, with live progress and cancel);
// every run directory with status, metrics and base model; compare two; open the evaluation
// report; start `smolora eval`.

import { $, api, badge, el, fmtNum, notice, shared, svg, table } from "./common.js";
import { lineChart } from "./chart.js";

let runs = [];
let queueTimer = null;

// --- the training queue (GET /api/jobs?kind=train: the workspace's .smolora/jobs) -------------

const when = (stamp) => (stamp ? new Date(stamp * 1000).toLocaleString() : "–");
const live = (j) => ["queued", "running", "stopping"].includes(j.state);

// step and loss are the job's newest metrics event, as the worker recorded it
function progressText(j) {
  if (j.state === "queued") return j.ahead ? `waiting: ${j.ahead} ahead` : "waiting: next";
  if (!j.step) return "–";
  return `step ${j.step}${j.max_steps ? ` / ${j.max_steps}` : ""} · loss ${fmtNum(j.loss)}`;
}

async function cancelJob(j) {
  const out = $("#queue-notice");
  try {
    const res = await api(`/api/jobs/${j.id}/stop`, { method: "POST" });
    notice(out, "info", res.state === "stopped" ? `cancelled ${j.name}` : `stopping ${j.name}: it saves a checkpoint after this step`);
  } catch (e) {
    notice(out, "error", e.message);
  }
  loadQueue().catch((e) => notice(out, "error", e.message));
}

function queueRow(j) {
  const watch = () => {
    shared.follow(j.id);
    shared.show("train");
  };
  return [
    el("div", { dataset: { job: j.id } }, el("span", { class: "run-name", text: j.name }), el("div", { class: "muted small", text: j.id })),
    badge(j.state),
    el("span", { class: "job-progress", text: progressText(j) }),
    j.error ? el("span", { class: "bad small", text: j.error }) : j.run_dir,
    when(j.created),
    el(
      "div",
      { class: "actions" },
      el("button", { class: "secondary", onclick: watch, text: "watch" }),
      ["queued", "running"].includes(j.state) ? el("button", { class: "danger cancel", onclick: () => cancelJob(j), text: "cancel" }) : null,
    ),
  ];
}

async function loadQueue() {
  clearTimeout(queueTimer);
  const { jobs } = await api("/api/jobs?kind=train");
  const box = $("#queue-table");
  if (!jobs.length) box.replaceChildren(el("div", { class: "muted", text: "no training jobs yet: Start one in the Train view" }));
  else box.replaceChildren(table(["job", "status", "progress", "run", "queued at", ""], jobs.map(queueRow)));
  // While a job waits or trains, keep its row (and its progress) up to date.
  if (!$("#view-runs").hidden && jobs.some(live)) queueTimer = setTimeout(() => loadQueue().catch(() => {}), 2000);
}

// --- run directories -------------------------------------------------------------------------

// eval_score is [metric, base, fine-tuned] from `smolora eval` (exact match, else eval loss).
function scores(r) {
  if (!r.eval_score) return "–";
  const [name, base, tuned] = r.eval_score;
  return `${name}: ${fmtNum(base, 3)} → ${fmtNum(tuned, 3)}`;
}

async function evaluate(path) {
  const out = $("#runs-notice");
  try {
    const job = await api("/api/runs/eval", { method: "POST", body: { name: path } });
    notice(out, "info", `started: ${job.command} (the report appears here when it is done)`);
    const until = Date.now() + 30 * 60 * 1000;
    const tick = async () => {
      const j = await api(`/api/jobs/${job.id}`);
      if (j.state === "running" && Date.now() < until) return setTimeout(tick, 2000);
      notice(out, j.state === "finished" ? "ok" : "error", j.state === "finished" ? `evaluated ${path}` : `${j.state}: ${j.error || ""}`);
      load();
    };
    setTimeout(tick, 2000);
  } catch (e) {
    notice(out, "error", e.message);
  }
}

function row(r) {
  const actions = el(
    "div",
    { class: "actions" },
    r.has_report ? el("a", { href: `/api/runs/file/${r.path}/eval/report.html`, target: "_blank", class: "button secondary", text: "report" }) : null,
    r.has_adapter ? el("button", { class: "secondary", onclick: () => evaluate(r.path), text: "evaluate" }) : null,
    r.has_adapter ? el("button", { class: "secondary", onclick: () => { shared.chatWith && shared.chatWith(r.path); }, text: "chat" }) : null,
    r.has_adapter ? el("button", { class: "secondary", onclick: () => { shared.exportRun && shared.exportRun(r.path); }, text: "export" }) : null,
  );
  return [
    el("input", { type: "checkbox", class: "cmp", value: r.path, "aria-label": `compare ${r.name}` }),
    el(
      "div",
      {},
      el("span", { class: "run-name", text: r.name, title: r.path }),
      // What training and `smolora eval` found, with the setting to change (eval/diagnose.py).
      [r.best, ...(r.diagnosis || [])].filter(Boolean).map((line) => el("div", { class: "muted small diagnosis", text: line })),
    ),
    badge(r.status),
    r.base_model || "–",
    r.method || "–",
    fmtNum(r.steps),
    fmtNum(r.final_loss),
    fmtNum(r.eval_loss),
    scores(r),
    r.date || "–",
    actions,
  ];
}

async function load() {
  const res = await api("/api/runs");
  runs = res.runs;
  const box = $("#runs-table");
  if (!runs.length) {
    box.replaceChildren(el("div", { class: "muted", text: "no runs yet: start one in the Train view (runs land in runs/ of the workspace)" }));
    return;
  }
  box.replaceChildren(table(["", "run", "status", "base model", "method", "steps", "loss", "eval loss", "eval: base → tuned", "date", ""], runs.map(row)));
}

async function compare() {
  const picked = Array.from(document.querySelectorAll("#runs-table .cmp:checked")).map((c) => c.value);
  const out = $("#compare");
  if (picked.length !== 2) return notice($("#runs-notice"), "error", "tick exactly two runs to compare");
  notice($("#runs-notice"), "", "");
  const c = await api(`/api/runs/compare?a=${encodeURIComponent(picked[0])}&b=${encodeURIComponent(picked[1])}`);
  const chart = svg({ class: "chart", id: "compare-chart" });
  const fmt = (v) => (typeof v === "number" ? fmtNum(v) : v === undefined || v === null ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v));
  out.replaceChildren(
    el("h3", { text: `${c.names.a} (A) vs ${c.names.b} (B)` }),
    chart,
    el(
      "div",
      { class: "cards" },
      el(
        "div",
        { class: "card" },
        el("h4", { text: "Metrics" }),
        table(
          ["", "A", "B", "B − A"],
          c.metrics.map((m) => [m.metric, fmt(m.a), fmt(m.b), m.diff === null || m.diff === undefined ? "" : fmtNum(m.diff)]),
        ),
      ),
      el(
        "div",
        { class: "card" },
        el("h4", { text: `Config differences (${c.config.length})` }),
        c.config.length ? table(["key", "A", "B"], c.config.map((d) => [d.key, fmt(d.a), fmt(d.b)])) : el("div", { class: "muted", text: "same config" }),
      ),
    ),
  );
  const pts = (rows, k) => rows.filter((r) => r[k] !== undefined && r[k] !== null).map((r) => [r.step, r[k]]);
  lineChart(chart, [
    { name: `A loss`, color: "#4f46e5", points: pts(c.curves.a, "loss") },
    { name: `B loss`, color: "#059669", points: pts(c.curves.b, "loss") },
    { name: `A eval`, color: "#a5b4fc", points: pts(c.curves.a, "eval_loss"), dots: true },
    { name: `B eval`, color: "#6ee7b7", points: pts(c.curves.b, "eval_loss"), dots: true },
  ]);
}

export function initRuns() {
  $("#runs-refresh").addEventListener("click", () => {
    load();
    loadQueue();
  });
  $("#compare-btn").addEventListener("click", () => compare().catch((e) => notice($("#runs-notice"), "error", e.message)));
}

export function showRuns() {
  load().catch((e) => notice($("#runs-notice"), "error", e.message));
  loadQueue().catch((e) => notice($("#queue-notice"), "error", e.message));
}

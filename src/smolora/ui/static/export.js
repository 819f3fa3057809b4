// Export view: `smolora merge` / `smolora export --format gguf|ollama` as subprocesses, then
// the parity check they write (parity.json) shown as a table.

import { $, api, badge, el, fmtNum, notice, shared, table } from "./common.js";

async function loadRuns(select = null) {
  const { runs } = await api("/api/runs");
  const done = runs.filter((r) => r.has_adapter);
  const pick = $("#export-run");
  const keep = select || pick.value;
  pick.replaceChildren(
    el("option", { value: "", text: done.length ? "— pick a finished run —" : "(no finished run yet)" }),
    ...done.map((r) => el("option", { value: r.path, text: `${r.name} (${r.base_model})` })),
  );
  if (keep) pick.value = keep;
  if (pick.value) showParity(pick.value);
}

function updateQuant() {
  $("#export-quant").disabled = $("#export-format").value === "merge"; // a merge keeps the weights' dtype
}

async function follow(job) {
  const box = $("#export-job");
  const until = Date.now() + 60 * 60 * 1000;
  for (;;) {
    const j = await api(`/api/jobs/${job.id}`);
    box.replaceChildren(el("div", {}, badge(j.state), " ", el("code", { text: j.command })), el("pre", { class: "log", text: j.log_tail || "" }));
    if (j.state !== "running" || Date.now() > until) {
      if (j.state === "failed") notice($("#export-notice"), "error", j.error || "export failed");
      if (j.state === "finished") notice($("#export-notice"), "ok", "done");
      showParity($("#export-run").value);
      return;
    }
    await new Promise((r) => setTimeout(r, 1500));
  }
}

async function start() {
  const run = $("#export-run").value;
  if (!run) return notice($("#export-notice"), "error", "pick a run");
  notice($("#export-notice"), "", "");
  try {
    const body = { run, format: $("#export-format").value, quant: $("#export-quant").value, out: $("#export-out").value.trim() || null };
    const job = await api("/api/export", { method: "POST", body });
    follow(job);
  } catch (e) {
    notice($("#export-notice"), "error", e.message);
  }
}

function parityTable(p) {
  if (!p || typeof p !== "object") return el("div", { class: "muted", text: "unreadable parity.json" });
  if (p.checks && typeof p.checks === "object") {
    const cols = ["greedy_match", "token_agreement", "max_logit_diff", "ppl_reference", "ppl", "ppl_rel_diff"];
    const rows = Object.entries(p.checks).map(([name, c]) => [
      el("b", { text: name }),
      c.precision || "–",
      ...cols.map((k) => fmtNum(c[k])),
      c.broken && c.broken.length ? el("span", { class: "bad", text: c.broken.join("; ") }) : el("span", { class: "ok", text: "ok" }),
    ]);
    return el(
      "div",
      {},
      el("div", { class: p.passed ? "ok" : "bad", text: p.passed ? "✓ parity holds" : "✗ parity broken: do not deploy this artifact" }),
      el("div", { class: "muted small", text: `${(p.prompts || []).length} held-out prompts · reference: ${p.reference || "?"} · base ${p.base_model || "?"}` }),
      table(["artifact", "precision", "greedy match", "token agreement", "max logit diff", "ppl (ref)", "ppl", "ppl rel. diff", "verdict"], rows),
    );
  }
  const flat = [];
  const walk = (o, prefix) => {
    for (const [k, v] of Object.entries(o)) {
      const key = prefix ? `${prefix}.${k}` : k;
      if (v && typeof v === "object" && !Array.isArray(v)) walk(v, key);
      else flat.push([key, typeof v === "number" ? fmtNum(v) : Array.isArray(v) ? JSON.stringify(v).slice(0, 200) : String(v)]);
    }
  };
  walk(p, "");
  const ok = p.ok ?? p.passed ?? p.pass;
  return el("div", {}, ok === undefined ? null : el("div", { class: ok ? "ok" : "bad", text: ok ? "✓ parity holds" : "✗ parity broken" }), table(["check", "value"], flat));
}

async function showParity(run) {
  if (!run) return;
  const box = $("#parity");
  const res = await api(`/api/export/parity?run=${encodeURIComponent(run)}`);
  box.replaceChildren(
    res.files.length
      ? el("div", {}, res.files.map((f) => el("div", { class: "card" }, el("h4", { text: f.path }), parityTable(f.parity))))
      : el("div", { class: "muted", text: "no parity.json yet for this run: every merge and export writes one" }),
  );
}

export async function initExport() {
  $("#export-format").addEventListener("change", updateQuant);
  $("#export-run").addEventListener("change", () => showParity($("#export-run").value));
  $("#export-btn").addEventListener("click", start);
  shared.exportRun = (path) => {
    shared.show("export");
    loadRuns(path);
  };
  updateQuant();
}

export function showExport() {
  loadRuns().catch((e) => notice($("#export-notice"), "error", e.message));
  updateQuant();
}

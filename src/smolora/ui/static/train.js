// Train view: a form generated from the config's JSON schema, a live YAML/command preview
// validated by the server (build_config), Start (queues `smolora train` on the workspace's job
// queue; several may wait their turn), Stop (cancels the job shown), and live progress.

import { $, api, badge, el, fmtBytes, fmtDuration, fmtNum, notice, shared } from "./common.js";
import { lineChart } from "./chart.js";

const STORE = "smolora.form.v1";
const OPEN_SECTIONS = new Set(["model", "data", "lora", "train", "output"]);
const fields = []; // {key, kind, options, nullable, def, input}
let previewTimer = null;
let pollTimer = null;
let sysTimer = null;
let rows = [];
let rowsOf = null; // the job the chart's rows belong to
let following = null; // the job id shown here; null: the one training now, else the newest
let lastStatus = { state: "idle" };

// --- the form ------------------------------------------------------------------------

function deref(schema, node) {
  if (node && node.$ref) return schema.$defs[node.$ref.split("/").pop()];
  return node;
}

function kindOf(prop) {
  if (prop.anyOf) {
    const nullable = prop.anyOf.some((v) => v.type === "null");
    const rest = prop.anyOf.filter((v) => v.type !== "null");
    if (rest.length === 1) return { ...kindOf(rest[0]), nullable };
    // A number or a word ("auto" for train.lr, train.epochs): typed as text, sent bare.
    const numeric = rest.find((v) => v.type === "integer" || v.type === "number");
    if (numeric && rest.every((v) => v === numeric || v.const !== undefined || v.enum)) return { kind: numeric.type, nullable };
    return { kind: "json", nullable };
  }
  if (prop.enum) return { kind: "enum", options: prop.enum, nullable: false };
  if (prop.type === "boolean") return { kind: "bool", nullable: false };
  if (prop.type === "integer" || prop.type === "number") return { kind: prop.type, nullable: false };
  if (prop.type === "string") return { kind: "string", nullable: false };
  return { kind: "json", nullable: false };
}

function asString(v, kind) {
  if (v === null || v === undefined) return "";
  if (kind === "json" || typeof v === "object") return JSON.stringify(v);
  return String(v);
}

// A string value as `--set` takes it: bare when YAML reads it back unchanged, else JSON-quoted.
function setValue(s) {
  const yamlWords = /^(y|n|yes|no|on|off|true|false|null|~|inf|nan|infinity|\.inf|\.nan)$/i;
  const bare = /^[A-Za-z_\/~][A-Za-z0-9_\-\/.~+]*$/.test(s) && !yamlWords.test(s) && Number.isNaN(Number(s));
  return bare ? s : JSON.stringify(s);
}

function currentString(f) {
  return f.kind === "bool" ? String(f.input.checked) : f.input.value;
}

export function overrides() {
  const out = [];
  for (const f of fields) {
    const v = currentString(f);
    if (v === asString(f.def, f.kind)) continue;
    if (v === "") out.push(`${f.key}=`);
    else if (f.kind === "string" || f.kind === "enum") out.push(`${f.key}=${setValue(v)}`);
    else out.push(`${f.key}=${v.trim()}`);
  }
  return out;
}

function widget(key, k, def) {
  const value = asString(def, k.kind);
  if (k.kind === "bool") {
    return el("input", { type: "checkbox", name: key, id: `f-${key}`, checked: def === true });
  }
  if (k.kind === "enum") {
    const sel = el(
      "select",
      { name: key, id: `f-${key}` },
      k.nullable ? el("option", { value: "", text: "(none)" }) : null,
      k.options.map((o) => el("option", { value: o, text: o })),
    );
    sel.value = value;
    return sel;
  }
  const placeholder =
    k.kind === "json" ? (Array.isArray(def) ? '["a", "b"]' : def && typeof def === "object" ? '{"prompt": "question"}' : "value or [list]") : k.nullable ? "(none)" : "";
  return el("input", {
    type: "text",
    name: key,
    id: `f-${key}`,
    value,
    placeholder,
    inputmode: k.kind === "integer" || k.kind === "number" ? "decimal" : undefined,
    spellcheck: "false",
    autocomplete: "off",
  });
}

function buildForm(root, schema, defaults) {
  root.replaceChildren();
  const saved = JSON.parse(localStorage.getItem(STORE) || "{}");
  for (const [section, ref] of Object.entries(schema.properties)) {
    const sec = deref(schema, ref);
    const grid = el("div", { class: "field-grid" });
    for (const [name, prop] of Object.entries(sec.properties || {})) {
      const key = `${section}.${name}`;
      const k = kindOf(prop);
      const def = (defaults[section] || {})[name];
      const input = widget(key, k, def);
      if (key in saved) {
        if (k.kind === "bool") input.checked = saved[key] === "true";
        else input.value = saved[key];
      }
      const f = { key, ...k, def, input };
      fields.push(f);
      const defText = k.kind === "bool" ? "" : `default: ${asString(def, k.kind) || "none"}`;
      grid.append(
        el(
          "div",
          { class: `field field-${k.kind}`, dataset: { key } },
          el("label", { for: `f-${key}` }, el("span", { class: "field-name", text: name }), el("span", { class: "field-default", text: defText })),
          input,
          prop.description ? el("div", { class: "field-help", text: prop.description }) : null,
          el("div", { class: "field-error" }),
        ),
      );
    }
    const details = el(
      "details",
      { class: "section", open: OPEN_SECTIONS.has(section), dataset: { section } },
      el("summary", {}, el("span", { text: section }), el("span", { class: "section-desc", text: sec.description ? "" : "" })),
      grid,
    );
    root.append(details);
  }
  const name = fields.find((f) => f.key === "output.name");
  if (name && !name.input.value) {
    const d = new Date();
    const pad = (n) => String(n).padStart(2, "0");
    name.input.value = `ui-${d.getFullYear()}${pad(d.getMonth() + 1)}${pad(d.getDate())}-${pad(d.getHours())}${pad(d.getMinutes())}`;
  }
  root.addEventListener("input", onFormChange);
  root.addEventListener("change", onFormChange);
}

function onFormChange() {
  const saved = {};
  for (const f of fields) {
    const v = currentString(f);
    if (v !== asString(f.def, f.kind)) saved[f.key] = v;
  }
  localStorage.setItem(STORE, JSON.stringify(saved));
  clearTimeout(previewTimer);
  previewTimer = setTimeout(refreshPreview, 250);
}

export function setField(key, value) {
  const f = fields.find((x) => x.key === key);
  if (!f) return;
  if (f.kind === "bool") f.input.checked = value === true || value === "true";
  else f.input.value = value;
  onFormChange();
}

function resetForm() {
  localStorage.removeItem(STORE);
  for (const f of fields) {
    if (f.kind === "bool") f.input.checked = f.def === true;
    else f.input.value = asString(f.def, f.kind);
  }
  const name = fields.find((f) => f.key === "output.name");
  if (name) name.input.value = `ui-${Date.now().toString(36)}`;
  onFormChange();
}

async function refreshPreview() {
  let view;
  try {
    view = await api("/api/config/preview", { method: "POST", body: { overrides: overrides() } });
  } catch (e) {
    notice($("#form-problems"), "error", e.message);
    return;
  }
  for (const node of document.querySelectorAll("#train-form .field")) {
    node.classList.remove("invalid");
    $(".field-error", node).textContent = "";
  }
  const general = [];
  for (const p of view.problems) {
    // "lora.targets.list[str]" belongs to the field "lora.targets": the longest matching key wins.
    const f = fields
      .filter((x) => p.path === x.key || p.path.startsWith(x.key + "."))
      .sort((a, b) => b.key.length - a.key.length)[0];
    const node = f && document.querySelector(`#train-form .field[data-key="${f.key}"]`);
    if (node) {
      node.classList.add("invalid");
      $(".field-error", node).textContent = p.message;
      node.closest("details").open = true;
    } else general.push(`${p.path ? p.path + ": " : ""}${p.message}`);
  }
  // Tokens and keys are masked in the config file the UI writes, and training reads that file.
  const masked = (view.masked || []).length ? `masked in ${view.config_file} (they look like a token or key): ${view.masked.join(", ")}` : "";
  notice($("#form-problems"), general.length ? "error" : masked ? "info" : "", general.length ? general.join("\n") : masked);
  $("#preview-yaml").textContent = view.yaml;
  $("#preview-command").textContent = `${view.command}\n\n# the same, without a file:\n${view.set_command}`;
  $("#config-state").replaceChildren(
    view.ok ? el("span", { class: "ok", text: "✓ valid config" }) : el("span", { class: "bad", text: `✗ ${view.problems.length} problem(s)` }),
  );
  $("#start-btn").disabled = !view.ok;
  $("#start-btn").title = view.ok ? `runs: ${view.command}` : "fix the problems marked in the form";
}

// --- running ---------------------------------------------------------------------------

const isRunning = () => ["running", "stopping"].includes(lastStatus.state);
const isActive = () => isRunning() || lastStatus.state === "queued";
const waiting = (s) => (s.ahead ? `queued behind ${s.ahead} job(s)` : "queued: next to train");

async function start() {
  const out = $("#train-notice");
  notice(out, "", "");
  try {
    const res = await api("/api/train/start", { method: "POST", body: { overrides: overrides(), resume: $("#resume").checked } });
    follow(res.id);
    notice(out, "info", `${res.state === "queued" ? waiting(res) : res.state}: ${res.command} (job ${res.id})`);
  } catch (e) {
    notice(out, "error", e.message);
  }
}

async function stop() {
  try {
    const res = await api(`/api/train/stop${lastStatus.id ? `?job=${lastStatus.id}` : ""}`, { method: "POST" });
    const note = res.state === "stopped" ? "cancelled before it started" : "stopping: the trainer saves a checkpoint and exits (resume with the Resume box)";
    notice($("#train-notice"), "info", note);
    poll();
  } catch (e) {
    notice($("#train-notice"), "error", e.message);
  }
}

async function poll() {
  clearTimeout(pollTimer);
  let s;
  const job = following ? `&job=${following}` : "";
  try {
    s = await api(`/api/train/status?since=${rows.length}${job}`);
  } catch (e) {
    pollTimer = setTimeout(poll, 3000);
    return;
  }
  if (s.id !== rowsOf) {
    rows = []; // another job: its rows start again from the first
    rowsOf = s.id;
    if (s.rows && s.rows.length !== s.n_rows) return poll();
  }
  if (s.rows && s.n_rows < rows.length) rows = []; // a new run replaced the file
  if (s.rows) rows.push(...s.rows);
  lastStatus = s;
  renderStatus(s);
  if (isActive()) pollTimer = setTimeout(poll, 1000); // a queued job too: it starts when a worker is free
}

// Show one job here (Start, or the Runs view's "watch"); null: the one training now.
export function follow(id) {
  following = id;
  poll();
}

// The objective's metrics in metrics.jsonl rows (pairs: reward_margin, reward_accuracy; kto:
// reward_chosen/rejected; grpo: reward), train and eval_ versions; none for sft.
const OBJECTIVE_METRICS = [
  ["reward_margin", "#16a34a", "#ea580c"],
  ["reward_accuracy", "#0891b2", "#9333ea"],
  ["reward_chosen", "#16a34a", "#ea580c"],
  ["reward_rejected", "#dc2626", "#9333ea"],
  ["reward", "#16a34a", "#ea580c"],
];

export function objectiveSeries(rows) {
  const out = [];
  const paired = rows.some((r) => Number.isFinite(r.reward_margin)); // then chosen/rejected are its parts
  for (const [key, color, evalColor] of OBJECTIVE_METRICS) {
    if (paired && key.startsWith("reward_") && !["reward_margin", "reward_accuracy"].includes(key)) continue;
    for (const [name, dots] of [[key, false], [`eval_${key}`, true]]) {
      const points = rows.filter((r) => Number.isFinite(r[name])).map((r) => [r.step, r[name]]);
      if (points.length) out.push({ name: name.replace(/_/g, " "), color: dots ? evalColor : color, points, dots });
    }
  }
  return out;
}

function renderStatus(s) {
  $("#train-state").replaceChildren(badge(s.state), s.name ? el("span", { class: "run-name", text: ` ${s.name}` }) : "");
  $("#start-btn").disabled = $("#config-state .bad") !== null; // more runs queue behind this one
  $("#stop-btn").disabled = !["running", "queued"].includes(s.state);
  const total = s.total_steps;
  const pct = total ? Math.min(100, (100 * s.step) / total) : 0;
  $("#progress-bar").style.width = `${pct}%`;
  const steps = `step ${s.step || 0}${total ? ` / ${s.total_exact ? "" : "~"}${total}` : ""}`;
  $("#progress-text").textContent = s.state === "idle" ? "no training job in this workspace's queue yet" : s.state === "queued" ? waiting(s) : steps;
  $("#stat-loss").textContent = fmtNum(s.loss);
  $("#stat-eval").textContent = fmtNum(s.eval_loss);
  $("#stat-tps").textContent = s.tokens_per_s ? fmtNum(Math.round(s.tokens_per_s)) : "–";
  $("#stat-eta").textContent = isRunning() ? fmtDuration(s.eta_s) : "–";
  $("#stat-elapsed").textContent = fmtDuration(s.elapsed);
  $("#stat-ckpt").textContent = s.checkpoints && s.checkpoints.length ? s.checkpoints[s.checkpoints.length - 1] : "–";
  const loss = rows.filter((r) => r.loss !== undefined && r.loss !== null).map((r) => [r.step, r.loss]);
  const evals = rows.filter((r) => r.eval_loss !== undefined && r.eval_loss !== null).map((r) => [r.step, r.eval_loss]);
  lineChart($("#loss-chart"), [
    { name: "loss", color: "#4f46e5", points: loss },
    { name: "eval loss", color: "#ea580c", points: evals, dots: true },
  ]);
  // dpo/orpo/simpo/kto/grpo log their own numbers (reward margin, accuracy, reward): a second chart
  const objective = objectiveSeries(rows);
  $("#objective-chart").toggleAttribute("hidden", !objective.length); // an <svg> has no .hidden
  if (objective.length) lineChart($("#objective-chart"), objective);
  const fail = $("#train-failure");
  if (s.state === "failed") {
    fail.hidden = false;
    $("#failure-error").textContent = s.error || "training failed";
    $("#failure-log").textContent = [s.log_tail, s.train_log_tail ? `--- train.log ---\n${s.train_log_tail}` : ""].filter(Boolean).join("\n");
  } else fail.hidden = true;
  if (s.state === "stopped") notice($("#train-notice"), "info", `stopped; checkpoints kept: ${(s.checkpoints || []).join(", ") || "none"}`);
  if (s.state === "finished") notice($("#train-notice"), "ok", `finished: adapter in ${s.run_dir}/adapter`);
}

async function system() {
  clearTimeout(sysTimer);
  if (document.hidden || $("#view-train").hidden) {
    sysTimer = setTimeout(system, 3000);
    return;
  }
  try {
    const s = await api("/api/system");
    $("#sys-cpu").textContent = `${s.cpu_percent.toFixed(0)}% of ${s.cpu_count} CPUs`;
    $("#sys-ram").textContent = `${fmtBytes(s.ram_used)} / ${fmtBytes(s.ram_total)}`;
    $("#sys-proc").textContent = s.training_rss ? fmtBytes(s.training_rss) : "–";
    $("#sys-gpu").textContent = s.gpus.length ? s.gpus.map((g) => `${g.name}: ${fmtBytes(g.used)} / ${fmtBytes(g.total)}`).join("; ") : "no GPU";
    $("#cpu-meter").style.width = `${Math.min(100, s.cpu_percent)}%`;
    $("#ram-meter").style.width = `${(100 * s.ram_used) / s.ram_total}%`;
  } catch (_) {}
  sysTimer = setTimeout(system, 2000);
}

export async function initTrain() {
  const { schema, defaults } = await api("/api/schema");
  buildForm($("#train-form"), schema, defaults);
  $("#start-btn").addEventListener("click", start);
  $("#stop-btn").addEventListener("click", stop);
  $("#reset-btn").addEventListener("click", resetForm);
  for (const b of document.querySelectorAll("#preview-tabs button")) {
    b.addEventListener("click", () => {
      document.querySelectorAll("#preview-tabs button").forEach((x) => x.classList.toggle("active", x === b));
      $("#preview-yaml").hidden = b.dataset.tab !== "yaml";
      $("#preview-command").hidden = b.dataset.tab !== "command";
    });
  }
  shared.overrides = overrides;
  shared.setField = setField;
  shared.follow = follow;
  await refreshPreview();
  await poll();
  system();
}

export function showTrain() {
  refreshPreview();
  poll();
}

// Data view: pick or upload a file (inside the workspace only) and show what
// `smolora data inspect` shows, with the Train form's model and data settings.

import { $, api, el, fmtBytes, fmtNum, notice, shared, svg, table } from "./common.js";
import { barChart } from "./chart.js";

async function loadFiles(select = null) {
  const { files } = await api("/api/files");
  const pick = $("#data-file");
  const keep = select || pick.value;
  pick.replaceChildren(
    el("option", { value: "", text: files.length ? "— pick a file in the workspace —" : "(no data files in the workspace yet)" }),
    ...files.map((f) => el("option", { value: f.path, text: `${f.path}  (${fmtBytes(f.size)})` })),
  );
  if (keep) pick.value = keep;
}

async function upload() {
  const input = $("#upload-file");
  const out = $("#upload-notice");
  const file = input.files[0];
  if (!file) return notice(out, "error", "choose a file first");
  const dest = $("#upload-path").value.trim() || `uploads/${file.name}`;
  notice(out, "info", `uploading ${file.name}…`);
  try {
    const res = await api(`/api/upload?path=${encodeURIComponent(dest)}`, { method: "POST", raw: file });
    notice(out, "ok", `saved to ${res.path} (${fmtBytes(res.size)})`);
    await loadFiles(res.path);
    inspect();
  } catch (e) {
    notice(out, "error", `refused: ${e.message}`);
  }
}

function onPickUpload() {
  const file = $("#upload-file").files[0];
  if (file) $("#upload-path").value = `uploads/${file.name}`;
}

async function inspect() {
  const path = $("#data-file").value;
  const out = $("#data-report");
  if (!path) return notice($("#inspect-notice"), "error", "pick a file or upload one");
  notice($("#inspect-notice"), "info", `inspecting ${path} (the first time loads the model's tokenizer)…`);
  out.replaceChildren();
  try {
    const r = await api("/api/data/inspect", { method: "POST", body: { path, overrides: shared.overrides() } });
    notice($("#inspect-notice"), "", "");
    render(r);
  } catch (e) {
    notice($("#inspect-notice"), "error", e.message);
  }
}

function kv(obj) {
  return table(["key", "value"], Object.entries(obj || {}).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : fmtNum(v)]));
}

function render(r) {
  const out = $("#data-report");
  const hist = svg({ id: "length-hist", class: "chart chart-short" });
  const examples = r.examples.map((segs, i) =>
    el(
      "div",
      { class: "example" },
      el("div", { class: "example-head", text: `example ${i + 1}` }),
      el(
        "pre",
        { class: "example-text" },
        segs.map(([text, trained]) => el("span", { class: trained ? "trained" : "context", text })),
      ),
    ),
  );
  out.append(
    el(
      "div",
      { class: "cards" },
      el(
        "div",
        { class: "card" },
        el("h3", { text: "Detected shape" }),
        el("div", { class: "big-badge", id: "data-format", text: r.format }),
        el("div", { class: "muted", text: `${r.files.join(", ")} · tokenizer of ${r.model}` }),
        el("h4", { text: "Field mapping (our role → your column)" }),
        kv(r.mapping),
        el("button", { class: "secondary train-this", onclick: () => { shared.setField("data.path", r.path); shared.show("train"); }, text: "Train on this file →" }),
      ),
      el("div", { class: "card" }, el("h3", { text: "Counts" }), kv({ ...r.counts, rows: r.n_rows, "trainable tokens": r.trainable_tokens, "trainable share": r.trainable_share })),
      el(
        "div",
        { class: "card card-wide" },
        el("h3", { text: `Token lengths vs max_length ${r.max_length}` }),
        el("div", { class: "muted", text: `mean ${r.lengths.mean} · p50 ${r.lengths.p50} · p95 ${r.lengths.p95} · max ${r.lengths.max} · ${r.truncated} truncated · ${r.chunked} chunked` }),
        hist,
      ),
    ),
    el(
      "div",
      { class: "card" },
      el("h3", { text: "Warnings" }),
      r.warnings.length ? el("ul", { class: "warnings" }, r.warnings.map((w) => el("li", { text: w }))) : el("div", { class: "ok", text: "no warnings" }),
    ),
    el(
      "div",
      { class: "card" },
      el("h3", {}, "Rendered examples ", el("span", { class: "legend-trained", text: "trained on" }), " ", el("span", { class: "legend-context", text: "context (masked)" })),
      examples,
    ),
  );
  if (r.histogram) barChart(hist, r.histogram);
  else hist.replaceWith(el("div", { class: "muted", text: r.histogram_error || "no histogram" }));
}

export async function initData() {
  $("#upload-btn").addEventListener("click", upload);
  $("#upload-file").addEventListener("change", onPickUpload);
  $("#inspect-btn").addEventListener("click", inspect);
  $("#data-file").addEventListener("change", () => $("#data-file").value && inspect());
  $("#refresh-files").addEventListener("click", () => loadFiles());
}

export function showData() {
  loadFiles();
  const o = shared.overrides();
  const get = (k, d) => (o.find((x) => x.startsWith(k + "=")) || `=${d}`).split("=").slice(1).join("=");
  $("#data-settings").textContent = `model ${get("model.name", "smollm2-135m")}, max_length ${get("data.max_length", "512")}, train_on ${get("data.train_on", "completion")} (from the Train form)`;
}

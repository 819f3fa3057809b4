// Models view: the model store ($SMOLORA_HOME/models): list, pull, verify sha256, remove.

import { $, api, badge, el, fmtBytes, notice, table } from "./common.js";

async function load() {
  const { models, store } = await api("/api/models");
  $("#models-store").textContent = store;
  const box = $("#models-table");
  if (!models.length) return box.replaceChildren(el("div", { class: "muted", text: "the store is empty" }));
  box.replaceChildren(
    table(
      ["model", "status", "kind", "source", "size", "files", "pulled", ""],
      models.map((m) => {
        const pulled = m.status !== "not pulled yet";
        return [
          el("span", { class: "run-name", text: m.name }),
          badge(m.status === "ok" ? "ok" : m.status),
          m.kind || "–",
          el("span", { class: "muted small", text: m.source || "–" }),
          m.size ? fmtBytes(m.size) : "–",
          m.files || "–",
          m.created || "–",
          el(
            "div",
            { class: "actions" },
            pulled ? el("button", { class: "secondary", onclick: () => verify(m.name), text: "verify" }) : el("button", { class: "secondary", onclick: () => pull(m.name), text: "pull" }),
            pulled ? el("button", { class: "danger", onclick: () => remove(m.name), text: "remove" }) : null,
          ),
        ];
      }),
    ),
  );
}

async function verify(name) {
  const out = $("#models-notice");
  notice(out, "info", `verifying ${name} (sha256 of every file)…`);
  try {
    const r = await api("/api/models/verify", { method: "POST", body: { name } });
    notice(out, r.ok ? "ok" : "error", r.ok ? `${name}: all ${r.checked} files match their sha256` : `${name}: ${[r.bad_files.length ? `changed or missing: ${r.bad_files.join(", ")}` : "", r.extra_files.length ? `not in the manifest: ${r.extra_files.join(", ")}` : ""].filter(Boolean).join("; ")} (pull it again)`);
  } catch (e) {
    notice(out, "error", e.message);
  }
}

async function remove(name) {
  if (!confirm(`Remove ${name} from the model store?`)) return;
  try {
    await api("/api/models/remove", { method: "POST", body: { name } });
    notice($("#models-notice"), "ok", `removed ${name}`);
    load();
  } catch (e) {
    notice($("#models-notice"), "error", e.message);
  }
}

async function pull(name) {
  name = name || $("#pull-name").value.trim();
  if (!name) return notice($("#models-notice"), "error", "type a model name: an alias, a .gguf in the workspace or a hub id");
  const box = $("#pull-job");
  try {
    const job = await api("/api/models/pull", { method: "POST", body: { name } });
    const until = Date.now() + 60 * 60 * 1000;
    for (;;) {
      const j = await api(`/api/jobs/${job.id}`);
      box.replaceChildren(el("div", {}, badge(j.state), " ", el("code", { text: j.command })), el("pre", { class: "log", text: j.log_tail || "" }));
      if (j.state !== "running" || Date.now() > until) break;
      await new Promise((r) => setTimeout(r, 1500));
    }
    load();
  } catch (e) {
    notice($("#models-notice"), "error", e.message);
  }
}

export function initModels() {
  $("#pull-btn").addEventListener("click", () => pull());
  $("#models-refresh").addEventListener("click", load);
}

export function showModels() {
  load().catch((e) => notice($("#models-notice"), "error", e.message));
}

// Chat view: talk to a base model or a run, answers streamed token by token; side by side,
// the same prompt goes to the run and to its base model.

import { $, api, el, notice, postStream, shared } from "./common.js";

let options = { runs: [], bases: [] };
let columns = []; // {model, label, history, box}
let busy = false;

function baseOf(model) {
  const r = options.runs.find((x) => x.value === model);
  return r ? r.base : null;
}

function setupColumns() {
  const model = $("#chat-model").value.trim();
  const base = baseOf(model);
  const side = $("#chat-side").checked && base;
  $("#chat-side").disabled = !base;
  $("#chat-side-hint").textContent = base ? `base: ${base}` : "pick a run to compare it with its base model";
  const wanted = side ? [{ model: base, label: `base · ${base}` }, { model, label: `fine-tuned · ${model}` }] : [{ model, label: model }];
  if (columns.length === wanted.length && columns.every((c, i) => c.model === wanted[i].model)) return;
  columns = wanted.map((w) => ({ ...w, history: [], box: el("div", { class: "messages" }) }));
  $("#chat-columns").replaceChildren(
    ...columns.map((c) => el("div", { class: "chat-col" }, el("div", { class: "chat-col-head", text: c.label || "(no model)" }), c.box)),
  );
  $("#chat-columns").classList.toggle("two", columns.length === 2);
}

function bubble(role, text = "") {
  return el("div", { class: `msg msg-${role}` }, el("div", { class: "msg-role", text: role === "user" ? "you" : "model" }), el("div", { class: "msg-text", text }));
}

async function ask(col, prompt) {
  col.history.push({ role: "user", content: prompt });
  col.box.append(bubble("user", prompt));
  const b = bubble("assistant");
  b.classList.add("streaming");
  const text = b.querySelector(".msg-text");
  col.box.append(b);
  let answer = "";
  await postStream(
    "/api/chat",
    {
      model: col.model,
      messages: col.history,
      max_new_tokens: +$("#chat-max").value || 128,
      temperature: +$("#chat-temp").value || 0,
    },
    (ev) => {
      if (ev.status === "loading") text.textContent = "loading the model…";
      if (ev.warning) notice($("#chat-notice"), "error", ev.warning); // another base than it was trained on
      if (ev.text) {
        answer += ev.text;
        text.textContent = answer.trimStart(); // leading newlines only push the text down
        col.box.scrollTop = col.box.scrollHeight;
      }
      if (ev.error) {
        b.classList.add("msg-error");
        text.textContent = ev.error;
      }
      if (ev.done && !answer.trim()) {
        b.classList.add("msg-blank");
        text.textContent = answer ? "(blank answer: only whitespace)" : "(empty answer)";
      }
    },
  );
  b.classList.remove("streaming");
  b.classList.add("done");
  col.history.push({ role: "assistant", content: answer });
}

async function send() {
  const prompt = $("#chat-input").value.trim();
  if (!prompt || busy) return;
  if (!$("#chat-model").value.trim()) return notice($("#chat-notice"), "error", "pick a model or a run first");
  notice($("#chat-notice"), "", "");
  setupColumns();
  busy = true;
  $("#chat-send").disabled = true;
  $("#chat-input").value = "";
  try {
    for (const col of columns) await ask(col, prompt); // one at a time: the server generates one at a time
  } catch (e) {
    notice($("#chat-notice"), "error", e.message);
  } finally {
    busy = false;
    $("#chat-send").disabled = false;
  }
}

function reset() {
  columns = [];
  setupColumns();
}

async function loadModels() {
  options = await api("/api/chat/models");
  $("#chat-models").replaceChildren(
    ...options.runs.map((r) => el("option", { value: r.value, label: `run (base ${r.base})` })),
    ...options.bases.map((b) => el("option", { value: b, label: "base model" })),
  );
  if (!$("#chat-model").value && (options.runs[0] || options.bases[0])) {
    $("#chat-model").value = options.runs.length ? options.runs[0].value : options.bases[0];
  }
  setupColumns();
}

export function initChat() {
  $("#chat-send").addEventListener("click", send);
  $("#chat-reset").addEventListener("click", reset);
  $("#chat-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      send();
    }
  });
  $("#chat-model").addEventListener("change", setupColumns);
  $("#chat-side").addEventListener("change", setupColumns);
  shared.chatWith = (path) => {
    $("#chat-model").value = path;
    $("#chat-side").checked = true;
    shared.show("chat");
  };
}

export function showChat() {
  loadModels().catch((e) => notice($("#chat-notice"), "error", e.message));
}

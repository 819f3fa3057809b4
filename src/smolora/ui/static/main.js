// Entry point: tabs (one per view, in the URL hash) and each view's init/show.

import { $, api, el, shared } from "./common.js";
import { initChat, showChat } from "./chat.js";
import { initData, showData } from "./data.js";
import { initExport, showExport } from "./export.js";
import { initModels, showModels } from "./models.js";
import { initRuns, showRuns } from "./runs.js";
import { initTrain, showTrain } from "./train.js";

const VIEWS = {
  train: [initTrain, showTrain],
  data: [initData, showData],
  runs: [initRuns, showRuns],
  chat: [initChat, showChat],
  export: [initExport, showExport],
  models: [initModels, showModels],
};

function show(name) {
  if (!VIEWS[name]) name = "train";
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== `view-${name}`;
  for (const t of document.querySelectorAll("nav a")) t.classList.toggle("active", t.dataset.view === name);
  VIEWS[name][1]();
}

async function main() {
  shared.show = show;
  let info;
  try {
    info = await api("/api/info");
  } catch (e) {
    if (e.status !== 401) throw e;
    // Opened without the token (or from an old launch): say where the right link is.
    document.querySelector("main").replaceChildren(
      el("p", {
        class: "notice notice-error",
        id: "token-needed",
        text: "This page needs the link smolora ui printed when it started (http://…/?token=…). Open that link once; the browser then remembers it.",
      }),
    );
    document.body.dataset.ready = "locked";
    return;
  }
  $("#workspace").textContent = info.workspace;
  $("#workspace").title = `every file the UI reads or writes lies inside ${info.workspace}`;
  $("#version").textContent = `v${info.version}`;
  for (const [name, [init]] of Object.entries(VIEWS)) {
    try {
      await init();
    } catch (e) {
      console.error(`${name}:`, e);
    }
  }
  for (const a of document.querySelectorAll("nav a")) {
    a.addEventListener("click", (e) => {
      e.preventDefault();
      show(a.dataset.view);
    });
  }
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  show(location.hash.slice(1));
  document.body.dataset.ready = "1"; // tests wait for this
}

main();

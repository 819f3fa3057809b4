// Entry point: tabs (one per view, in the URL hash) and each view's init/show.

import { $, api, shared } from "./common.js";
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
  const info = await api("/api/info");
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

// The page: compose (editor checked live by the server's planner), map, run (progress over
// server-sent events), history (the server's SQLite) and compare.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { plan: null, check: null, extracted: null, runId: null, source: null, detailId: null };

async function api(path, body) {
  const response = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch (err) { data = { error: { message: `${response.status} ${response.statusText}` } }; }
  return { ok: response.ok, status: response.status, data };
}

function showError(box, error) {
  if (!error) { box.hidden = true; box.textContent = ""; return; }
  box.hidden = false;
  box.innerHTML = "";
  const message = document.createElement("div");
  message.className = "message";
  message.textContent = (error.line ? `line ${error.line}: ` : "") + error.message;
  box.appendChild(message);
  if (error.hint) {
    const hint = document.createElement("div");
    hint.className = "hint";
    hint.textContent = "hint: " + error.hint;
    box.appendChild(hint);
  }
}

function formatBytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function formatSeconds(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "-";
  if (s < 60) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

// ---- navigation -------------------------------------------------------------------------------

function showPage(name) {
  for (const button of document.querySelectorAll("nav button")) button.classList.toggle("active", button.dataset.page === name);
  for (const page of document.querySelectorAll(".page")) page.classList.toggle("active", page.id === "page-" + name);
  if (name === "history") loadHistory();
  if (name === "compare") loadCompareChoices();
  if (name === "map") drawMap();
}

// ---- tooltip ----------------------------------------------------------------------------------

const tooltip = {
  attach(element, describe) {
    element.addEventListener("mouseenter", (event) => {
      const box = $("tooltip");
      box.textContent = describe();
      box.hidden = false;
      tooltip.move(event);
    });
    element.addEventListener("mousemove", tooltip.move);
    element.addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
  },
  move(event) {
    const box = $("tooltip");
    box.style.left = Math.min(event.clientX + 14, window.innerWidth - box.offsetWidth - 8) + "px";
    box.style.top = Math.min(event.clientY + 14, window.innerHeight - box.offsetHeight - 8) + "px";
  },
};

// ---- compose ----------------------------------------------------------------------------------

let checkTimer = null;
let checkSerial = 0;

function updateGutter() {
  const lines = $("recipe").value.split("\n").length;
  const bad = state.check && !state.check.ok ? state.check.error.line : null;
  const numbers = [];
  for (let i = 1; i <= lines; i++) numbers.push(i === bad ? `<span class="bad" title="error">${i}</span>` : String(i));
  $("gutter").innerHTML = numbers.join("\n");
  $("gutter").scrollTop = $("recipe").scrollTop;
}

function scheduleCheck() {
  updateGutter();
  clearTimeout(checkTimer);
  checkTimer = setTimeout(checkRecipe, 350);
}

async function checkRecipe() {
  const text = $("recipe").value;
  const serial = ++checkSerial;
  if (!text.trim()) {
    state.check = null;
    $("check-status").textContent = "Type or load a recipe.";
    $("check-status").className = "status muted";
    showError($("check-error"), null);
    $("start-merge").disabled = true;
    updateGutter();
    return;
  }
  $("check-status").textContent = "checking...";
  const { data } = await api("/api/check", { recipe: text });
  if (serial !== checkSerial) return; // a newer edit is being checked
  state.check = data.error && data.ok === undefined ? { ok: false, error: data.error } : data;
  const status = $("check-status");
  if (state.check.ok) {
    state.plan = state.check.plan;
    const plan = state.plan;
    status.textContent = `valid: ${plan.method}, ${plan.entries.length} tensors, ` +
      `${plan.config.num_hidden_layers ?? "?"} layers` + (plan.warnings.length ? `, ${plan.warnings.length} warning(s)` : "");
    status.className = "status ok";
    showError($("check-error"), null);
    const notes = [...plan.warnings, ...state.check.notes];
    $("check-notes").hidden = !notes.length;
    $("check-notes").textContent = notes.join("\n");
    state.extracted = state.check.from_card || state.check.rebuilt ? state.check.recipe : null;
    $("use-extracted").hidden = !state.extracted;
    $("start-merge").disabled = false;
  } else {
    status.textContent = "not valid";
    status.className = "status bad";
    showError($("check-error"), state.check.error);
    $("check-notes").hidden = true;
    $("use-extracted").hidden = true;
    $("start-merge").disabled = true;
  }
  updateGutter();
}

async function loadInfo() {
  const { data } = await api("/api/info");
  $("roots").textContent = "roots: " + data.roots.join(", ");
  const select = $("examples");
  state.examples = data.examples;
  data.examples.forEach((example, i) => {
    const option = document.createElement("option");
    option.value = String(i);
    option.textContent = example.name;
    select.appendChild(option);
  });
}

async function loadModels() {
  const { data } = await api("/api/models");
  state.models = [...data.folders.map((f) => ({ name: f, tag: "folder" })), ...data.hub.map((h) => ({ name: h, tag: "hub cache" }))];
  renderModels();
  const options = $("model-options");
  options.textContent = "";
  for (const model of state.models) {
    const option = document.createElement("option");
    option.value = model.name;
    options.appendChild(option);
  }
}

function renderModels() {
  const filter = $("model-filter").value.toLowerCase();
  const list = $("models");
  list.textContent = "";
  for (const model of state.models || []) {
    if (filter && !model.name.toLowerCase().includes(filter)) continue;
    const item = document.createElement("li");
    item.textContent = model.name;
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = model.tag;
    item.appendChild(tag);
    item.addEventListener("click", () => insertAtCursor(model.name));
    list.appendChild(item);
  }
}

function insertAtCursor(text) {
  const editor = $("recipe");
  const start = editor.selectionStart, end = editor.selectionEnd;
  editor.value = editor.value.slice(0, start) + text + editor.value.slice(end);
  editor.selectionStart = editor.selectionEnd = start + text.length;
  editor.focus();
  scheduleCheck();
}

// ---- map --------------------------------------------------------------------------------------

function drawMap() {
  const plan = state.plan;
  $("map-empty").hidden = !!plan;
  $("map-content").hidden = !plan;
  if (!plan) return;
  $("map-summary").textContent = `${plan.method}: ${plan.config.num_hidden_layers ?? "?"} output layers from ${plan.models.join(", ")}`;
  drawLayerMap($("layer-map"), plan, tooltip);
  const parameters = numericParameters(plan);
  const select = $("heat-param");
  const previous = select.value;
  select.textContent = "";
  for (const name of parameters.keys()) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    select.appendChild(option);
  }
  if ([...parameters.keys()].includes(previous)) select.value = previous;
  const models = $("heat-model");
  models.textContent = "";
  for (const model of plan.models) {
    const option = document.createElement("option");
    option.value = option.textContent = model;
    models.appendChild(option);
  }
  drawHeat();
}

function drawHeat() {
  const plan = state.plan;
  const name = $("heat-param").value;
  if (!plan || !name) { $("heat-map").textContent = "This method has no numeric parameter."; return; }
  const perModel = numericParameters(plan).get(name);
  $("heat-model-label").hidden = !perModel;
  drawHeatMap($("heat-map"), $("heat-legend"), plan, name, perModel ? $("heat-model").value : null, tooltip);
}

// ---- run --------------------------------------------------------------------------------------

async function startMerge() {
  showError($("merge-error"), null);
  const body = { recipe: $("recipe").value, out: $("out").value, overwrite: $("overwrite").checked };
  const { ok, data } = await api("/api/merges", body);
  if (!ok) { showError($("merge-error"), data.error); return; }
  followRun(data.id, data.out);
  showPage("run");
}

function followRun(id, out) {
  if (state.source) state.source.close();
  state.runId = id;
  $("run-empty").hidden = true;
  $("run-content").hidden = false;
  $("run-title").textContent = `merge ${id} into ${out}`;
  $("run-result").hidden = true;
  showError($("run-error"), null);
  setProgress(0, null);
  for (const cell of ["run-bytes", "run-tensors", "run-rate", "run-left"]) $(cell).textContent = "-";
  setRunState("running");
  $("cancel-merge").disabled = false;
  const source = new EventSource(`/api/merges/${id}/events`);
  state.source = source;
  source.onmessage = (message) => onRunEvent(JSON.parse(message.data));
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) state.source = null; };
}

function setRunState(text) {
  const element = $("run-state");
  element.textContent = text;
  element.className = "state " + text;
}

function setProgress(fraction, label) {
  const percent = Math.floor(100 * Math.min(1, Math.max(0, fraction)));
  $("progress-bar").style.width = percent + "%";
  $("progress-text").textContent = label || `${percent}%`;
}

function onRunEvent(event) {
  if (event.event === "planned") {
    $("run-tensors").textContent = `0 / ${event.tensors}`;
    $("run-bytes").textContent = `0 / ${formatBytes(event.bytes)}`;
  } else if (event.event === "progress") {
    const fraction = event.bytes_total ? event.bytes_done / event.bytes_total : 1;
    setProgress(fraction);
    $("run-bytes").textContent = `${formatBytes(event.bytes_done)} / ${formatBytes(event.bytes_total)}`;
    $("run-tensors").textContent = `${event.tensors_done} / ${event.tensors_total}`;
    $("run-rate").textContent = `${formatBytes(event.bytes_per_s)}/s`;
    $("run-left").textContent = formatSeconds(event.seconds_left);
  } else if (event.event === "done") {
    setProgress(1);
    $("run-left").textContent = "0 s";
    showRunResult(event.result);
  } else if (event.event === "error") {
    showError($("run-error"), event);
  } else if (event.event === "finished") {
    setRunState(event.state);
    $("cancel-merge").disabled = true;
    if (event.state === "cancelled") setProgress(0, "cancelled: nothing was left in the output folder");
    if (state.source) { state.source.close(); state.source = null; }
  }
}

function showRunResult(result) {
  $("run-result").hidden = false;
  fillFiles($("run-files"), result.files);
  $("run-verify").innerHTML = verifyHtml(result.verify);
}

function fillFiles(table, files) {
  table.innerHTML = "<thead><tr><th>file</th><th>size</th><th>SHA-256</th></tr></thead>";
  const body = document.createElement("tbody");
  for (const file of files || []) {
    const row = document.createElement("tr");
    for (const text of [file.name, formatBytes(file.bytes), file.sha256 ? file.sha256.slice(0, 16) + "..." : ""]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    body.appendChild(row);
  }
  table.appendChild(body);
}

function verifyHtml(report) {
  if (!report) return "";
  if (report.ok) return `<span class="verify-ok" data-testid="verify-ok">ok</span>: ${report.tensors} tensors read back, every value finite, config and plan agree`;
  return `<span class="verify-bad">${report.problems.length} problem(s)</span><ul>` +
    report.problems.map((p) => `<li>${escapeHtml(p)}</li>`).join("") + "</ul>";
}

async function cancelMerge() {
  if (state.runId === null) return;
  $("cancel-merge").disabled = true;
  setRunState("cancelling");
  const { ok, data } = await api(`/api/merges/${state.runId}/cancel`, {});
  if (!ok) showError($("run-error"), data.error);
}

// ---- history ----------------------------------------------------------------------------------

let historyTimer = null;

async function loadHistory() {
  const query = encodeURIComponent($("history-search").value);
  const { data } = await api(`/api/merges?q=${query}`);
  const table = $("history-table");
  table.innerHTML = "<thead><tr><th>#</th><th>started</th><th>method</th><th>output</th><th>outcome</th><th>duration</th></tr></thead>";
  const body = document.createElement("tbody");
  for (const merge of data) {
    const row = document.createElement("tr");
    row.dataset.id = merge.id;
    const cells = [merge.id, new Date(merge.started * 1000).toLocaleString(), merge.method, merge.output, merge.outcome,
      merge.duration_s === null ? "-" : formatSeconds(merge.duration_s)];
    cells.forEach((text, i) => {
      const cell = document.createElement("td");
      cell.textContent = text;
      if (i === 4) cell.className = "outcome-" + merge.outcome;
      row.appendChild(cell);
    });
    row.addEventListener("click", () => showDetail(merge.id));
    if (merge.id === state.detailId) row.classList.add("selected");
    body.appendChild(row);
  }
  table.appendChild(body);
}

async function showDetail(id) {
  state.detailId = id;
  for (const row of document.querySelectorAll("#history-table tbody tr")) row.classList.toggle("selected", Number(row.dataset.id) === id);
  const { data } = await api(`/api/merges/${id}`);
  $("history-detail").hidden = false;
  $("detail-title").textContent = `merge ${id}: ${data.output}`;
  const result = data.result || {};
  const figures = [
    ["outcome", data.outcome], ["method", data.method], ["duration", formatSeconds(data.duration_s)],
    ["tensors", result.tensors ?? "-"], ["written", formatBytes(result.bytes_written)],
    ["recipe SHA-256", data.recipe_sha256.slice(0, 16) + "..."],
  ];
  if (data.message) figures.push(["error", data.message]);
  $("detail-figures").innerHTML = figures.map(([k, v]) => `<tr><th>${k}</th><td>${escapeHtml(v)}</td></tr>`).join("");
  $("detail-recipe").textContent = data.recipe;
  $("detail-inputs").textContent = JSON.stringify(data.inputs, null, 2);
  fillFiles($("detail-files"), result.files);
  $("start-eval").disabled = data.outcome !== "done";
  renderEvaluations(data.evaluations);
}

function renderEvaluations(evaluations) {
  const box = $("detail-evaluations");
  box.textContent = "";
  for (const evaluation of evaluations) {
    const div = document.createElement("div");
    div.className = "evaluation";
    if (evaluation.outcome !== "done") {
      div.innerHTML = `<p>evaluation ${evaluation.id}: <span class="outcome-${evaluation.outcome}">${evaluation.outcome}</span> ${escapeHtml(evaluation.message || "")}</p>`;
    } else {
      div.appendChild(evaluationTable([evaluation]));
    }
    box.appendChild(div);
  }
}

function evaluationRows(evaluation) {
  const result = evaluation.result;
  return [
    ["base", evaluation.base || "(none)"],
    ["perplexity", formatNumber(result.model.perplexity)],
    ["base perplexity", result.base ? formatNumber(result.base.perplexity) : "-"],
    ["KL(base || model), nats/token", formatNumber(result.kl_mean)],
    ["top-1 agreement", result.top1_agreement === null ? "-" : (100 * result.top1_agreement).toFixed(1) + "%"],
    ["tokens", result.model.tokens],
  ];
}

function evaluationTable(evaluations, headers) {
  const table = document.createElement("table");
  table.className = "list";
  const rows = evaluations.map(evaluationRows);
  let html = headers ? `<thead><tr><th></th>${headers.map((h) => `<th>${escapeHtml(h)}</th>`).join("")}</tr></thead>` : "";
  rows[0].forEach(([label], i) => {
    html += `<tr><th>${label}</th>${rows.map((r) => `<td>${escapeHtml(r[i][1])}</td>`).join("")}</tr>`;
  });
  table.innerHTML = html;
  return table;
}

async function startEvaluation() {
  const id = state.detailId;
  showError($("eval-error"), null);
  const body = { base: $("eval-base").value, max_tokens: Number($("eval-tokens").value) };
  const { ok, data } = await api(`/api/merges/${id}/evaluate`, body);
  if (!ok) { showError($("eval-error"), data.error); return; }
  const label = $("eval-state");
  label.textContent = "evaluating...";
  label.className = "state running";
  const source = new EventSource(`/api/evaluations/${data.id}/events`);
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.event === "error") showError($("eval-error"), event);
    if (event.event === "finished") {
      source.close();
      label.textContent = event.state === "done" ? "evaluated" : event.state;
      label.className = "state " + event.state;
      if (state.detailId === id) showDetail(id);
    }
  };
}

// ---- compare ----------------------------------------------------------------------------------

async function loadCompareChoices() {
  const { data } = await api("/api/merges?outcome=done");
  for (const [select, pick] of [[$("compare-a"), 1], [$("compare-b"), 0]]) {
    const previous = select.value;
    select.textContent = "";
    for (const merge of data) {
      const option = document.createElement("option");
      option.value = merge.id;
      option.textContent = `#${merge.id} ${merge.output}`;
      select.appendChild(option);
    }
    if (previous && data.some((m) => String(m.id) === previous)) select.value = previous;
    else if (data.length > pick) select.value = String(data[pick].id);
  }
  compare();
}

async function compare() {
  const ids = [$("compare-a").value, $("compare-b").value].filter(Boolean);
  const records = await Promise.all(ids.map(async (id) => (await api(`/api/merges/${id}`)).data));
  const latest = records.map((r) => [...(r.evaluations || [])].reverse().find((e) => e.outcome === "done"));
  const table = $("compare-table");
  table.textContent = "";
  if (!records.length) { table.textContent = "No finished merges yet."; return; }
  const shown = latest.map((evaluation) => evaluation || null);
  if (shown.some((e) => !e)) {
    table.innerHTML = `<tr><td>${records.filter((_, i) => !shown[i]).map((r) => `merge ${r.id}`).join(", ")} has no evaluation yet: evaluate it from the History page.</td></tr>`;
  }
  const complete = shown.filter(Boolean);
  if (!complete.length) return;
  const labels = records.filter((_, i) => shown[i]).map((r) => `#${r.id} ${r.output.split("/").pop()}`);
  const built = evaluationTable(complete, labels);
  table.innerHTML += built.innerHTML;
  const series = (pick) => complete.flatMap((e, i) => {
    const lines = [{ label: labels[i], values: pick(e.result.model) || [], color: PALETTE[i] }];
    if (e.result.base && i === 0) lines.push({ label: "base", values: pick(e.result.base) || [], color: "#888", dashed: true });
    return lines;
  });
  drawLines($("compare-norm"), series((m) => m.profile.residual_norm), { log: true, xlabel: "layer" });
  drawLines($("compare-ratio"), series((m) => m.profile.update_ratio), { xlabel: "layer" });
  drawLines($("compare-lens"), complete.map((e, i) => ({ label: labels[i], values: e.result.logit_lens_kl, color: PALETTE[i] })),
    { log: true, xlabel: "layer" });
}

// ---- start ------------------------------------------------------------------------------------

function wire() {
  for (const button of document.querySelectorAll("nav button")) button.addEventListener("click", () => showPage(button.dataset.page));
  $("recipe").addEventListener("input", scheduleCheck);
  $("recipe").addEventListener("scroll", () => { $("gutter").scrollTop = $("recipe").scrollTop; });
  $("load-example").addEventListener("click", () => {
    $("recipe").value = state.examples[Number($("examples").value)].text;
    scheduleCheck();
  });
  $("use-extracted").addEventListener("click", () => { $("recipe").value = state.extracted; scheduleCheck(); });
  $("model-filter").addEventListener("input", renderModels);
  $("start-merge").addEventListener("click", startMerge);
  $("cancel-merge").addEventListener("click", cancelMerge);
  $("heat-param").addEventListener("change", drawHeat);
  $("heat-model").addEventListener("change", drawHeat);
  $("history-search").addEventListener("input", () => { clearTimeout(historyTimer); historyTimer = setTimeout(loadHistory, 250); });
  $("start-eval").addEventListener("click", startEvaluation);
  $("compare-a").addEventListener("change", compare);
  $("compare-b").addEventListener("change", compare);
}

wire();
loadInfo();
loadModels();
updateGutter();

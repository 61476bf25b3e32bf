// SVG charts drawn from plan --json and evaluate results: the layer map, the parameter heat map,
// and line charts. Plain DOM, no library: the page ships with the package and loads nothing else.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#3b5bdb", "#e8590c", "#2b8a3e", "#ae3ec9", "#c92a2a", "#0c8599", "#f08c00", "#5f3dc4"];
const LAYER_OF = /\.(\d+)\.(.+)$/;

function svgElement(tag, attributes, parent) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes || {})) element.setAttribute(key, value);
  if (parent) parent.appendChild(element);
  return element;
}

function svgText(parent, x, y, text, attributes) {
  const element = svgElement("text", { x, y, ...(attributes || {}) }, parent);
  element.textContent = text;
  return element;
}

// The layer a tensor name belongs to, and its kind ("self_attn.o_proj.weight"), or null.
function layerOf(name) {
  const match = LAYER_OF.exec(name);
  return match ? { layer: Number(match[1]), kind: match[2] } : null;
}

// Per output layer: the (model, source layer) pairs its tensors are read from.
function layerSources(plan) {
  const layers = new Map();
  for (const entry of plan.entries) {
    const out = layerOf(entry.output);
    if (!out) continue;
    if (!layers.has(out.layer)) layers.set(out.layer, new Map());
    const sources = layers.get(out.layer);
    for (const source of entry.sources) {
      const from = layerOf(source.tensor);
      if (!from) continue;
      const key = source.model + "\u0000" + from.layer;
      if (!sources.has(key)) sources.set(key, { model: source.model, layer: from.layer, entries: [] });
      sources.get(key).entries.push(entry);
    }
  }
  return layers;
}

function modelColors(plan) {
  const colors = new Map();
  plan.models.forEach((model, i) => colors.set(model, PALETTE[i % PALETTE.length]));
  return colors;
}

function drawLayerMap(container, plan, tooltip) {
  container.textContent = "";
  const layers = layerSources(plan);
  const outputs = [...layers.keys()].sort((a, b) => a - b);
  let maxSource = 0;
  for (const sources of layers.values()) for (const s of sources.values()) maxSource = Math.max(maxSource, s.layer);
  const colors = modelColors(plan);
  const step = Math.max(8, Math.min(18, 900 / Math.max(outputs.length, 1)));
  const rowStep = Math.max(5, Math.min(12, 320 / (maxSource + 1)));
  const left = 52, top = 14, width = left + step * outputs.length + 20, height = top + rowStep * (maxSource + 1) + 44;
  const svg = svgElement("svg", { width, height, "data-testid": "layer-map" }, container);
  const y = (layer) => top + rowStep * (maxSource - layer) + rowStep / 2;
  const x = (index) => left + step * index + step / 2;
  svgElement("line", { x1: left, y1: top, x2: left, y2: height - 30, stroke: "#999" }, svg);
  svgElement("line", { x1: left, y1: height - 30, x2: width - 10, y2: height - 30, stroke: "#999" }, svg);
  for (let layer = 0; layer <= maxSource; layer += Math.max(1, Math.ceil((maxSource + 1) / 12))) {
    svgText(svg, left - 6, y(layer) + 4, String(layer), { "text-anchor": "end" });
  }
  outputs.forEach((layer, index) => {
    if (index % Math.max(1, Math.ceil(outputs.length / 24)) === 0) {
      svgText(svg, x(index), height - 16, String(layer), { "text-anchor": "middle" });
    }
  });
  svgText(svg, left + (width - left) / 2, height - 2, "output layer", { "text-anchor": "middle" });
  const middle = top + (height - 30 - top) / 2;
  svgText(svg, 12, middle, "source layer", { transform: `rotate(-90 12 ${middle})`, "text-anchor": "middle" });
  outputs.forEach((layer, index) => {
    for (const source of layers.get(layer).values()) {
      const dot = svgElement("circle", {
        cx: x(index), cy: y(source.layer), r: Math.max(3, Math.min(6, step / 2.6)),
        fill: colors.get(source.model) || "#555", "data-output-layer": layer, "data-source-layer": source.layer,
      }, svg);
      const methods = [...new Set(source.entries.map((e) => e.method))].join(", ");
      tooltip.attach(dot, () =>
        `output layer ${layer} <- ${source.model} layer ${source.layer}\n${source.entries.length} tensors, ${methods}`);
    }
  });
  const legend = document.createElement("div");
  legend.className = "legend";
  for (const [model, color] of colors) {
    const swatch = document.createElement("span");
    swatch.innerHTML = `<span style="display:inline-block;width:10px;height:10px;border-radius:5px;background:${color}"></span> `;
    swatch.append(model);
    legend.appendChild(swatch);
  }
  container.appendChild(legend);
}

// Numeric parameters of the plan's entries: name -> whether it is per model (an array per source).
function numericParameters(plan) {
  const found = new Map();
  for (const entry of plan.entries) {
    for (const [name, value] of Object.entries(entry.params || {})) {
      if (typeof value === "number" || value === null) {
        if (!found.has(name)) found.set(name, false);
      } else if (Array.isArray(value) && value.some((v) => typeof v === "number")) {
        found.set(name, true);
      }
    }
  }
  return found;
}

function parameterValue(entry, name, model) {
  const value = (entry.params || {})[name];
  if (Array.isArray(value)) {
    const index = entry.sources.findIndex((s) => s.model === model);
    return index >= 0 && typeof value[index] === "number" ? value[index] : null;
  }
  return typeof value === "number" ? value : null;
}

const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]]; // viridis

function colorOf(fraction) {
  const t = Math.min(1, Math.max(0, fraction)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(t));
  const f = t - i;
  const c = STOPS[i].map((v, k) => Math.round(v + (STOPS[i + 1][k] - v) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function drawHeatMap(container, legend, plan, name, model, tooltip) {
  container.textContent = "";
  legend.textContent = "";
  const cells = new Map();
  const kinds = new Set();
  let maxLayer = -1;
  for (const entry of plan.entries) {
    const out = layerOf(entry.output);
    if (!out) continue;
    kinds.add(out.kind);
    maxLayer = Math.max(maxLayer, out.layer);
    cells.set(out.layer + "\u0000" + out.kind, entry);
  }
  const rows = [...kinds].sort();
  const values = [...cells.values()].map((e) => parameterValue(e, name, model)).filter((v) => v !== null);
  const low = values.length ? Math.min(...values) : 0;
  const high = values.length ? Math.max(...values) : 1;
  const span = high - low || 1;
  const cell = Math.max(8, Math.min(22, 900 / (maxLayer + 1)));
  const labelWidth = 8 + 7 * Math.max(...rows.map((r) => r.length), 4);
  const width = labelWidth + cell * (maxLayer + 1) + 10, height = 16 * rows.length + 40;
  const svg = svgElement("svg", { width, height, "data-testid": "heat-map" }, container);
  rows.forEach((kind, r) => {
    svgText(svg, labelWidth - 6, 16 * r + 12, kind, { "text-anchor": "end" });
    for (let layer = 0; layer <= maxLayer; layer++) {
      const entry = cells.get(layer + "\u0000" + kind);
      if (!entry) continue;
      const value = parameterValue(entry, name, model);
      const rect = svgElement("rect", {
        class: "cell", x: labelWidth + cell * layer, y: 16 * r, width: cell - 1, height: 15,
        fill: value === null ? "#e3e5e8" : colorOf((value - low) / span),
        "data-output": entry.output, "data-value": value === null ? "unset" : value,
      }, svg);
      tooltip.attach(rect, () => describeEntry(entry));
    }
  });
  for (let layer = 0; layer <= maxLayer; layer += Math.max(1, Math.ceil((maxLayer + 1) / 24))) {
    svgText(svg, labelWidth + cell * layer + cell / 2, 16 * rows.length + 14, String(layer), { "text-anchor": "middle" });
  }
  svgText(svg, labelWidth + (cell * (maxLayer + 1)) / 2, 16 * rows.length + 32, "output layer", { "text-anchor": "middle" });
  const stops = STOPS.map((c, i) => `rgb(${c.join(",")}) ${(100 * i) / (STOPS.length - 1)}%`).join(", ");
  legend.innerHTML = `<span>${name}${model ? " of " + escapeHtml(model) : ""}:</span><span>${formatNumber(low)}</span>` +
    `<span class="bar" style="background: linear-gradient(90deg, ${stops})"></span><span>${formatNumber(high)}</span>` +
    `<span class="muted">grey: not set (the method's default)</span>`;
}

function describeEntry(entry) {
  // a per-model parameter is an array with one value per source: shown beside its source
  const perSource = ([, v]) => Array.isArray(v) && v.length === entry.sources.length;
  const shown = (v) => (v === null ? "unset" : JSON.stringify(v));
  const params = Object.entries(entry.params || {}).filter((p) => !perSource(p))
    .map(([k, v]) => `${k}=${shown(v)}`).join(", ");
  const own = Object.entries(entry.params || {}).filter(perSource);
  const sources = entry.sources.map((s, i) =>
    `  ${s.model}: ${s.tensor}` + own.map(([k, v]) => `  ${k}=${shown(v[i])}`).join("")).join("\n");
  return `${entry.output}  [${entry.shape.join(", ")}] ${entry.written_dtype}\n${entry.method}(${params})  route: ${entry.route}\n` +
    `sources:\n${sources}`;
}

// series: [{label, values: [number], color}]; x runs 0..n-1 (or relative depth when `relative`).
function drawLines(container, series, options) {
  container.textContent = "";
  const width = options.width || 420, height = options.height || 240;
  const left = 56, right = 10, top = 10, bottom = 34;
  const svg = svgElement("svg", { width, height }, container);
  const all = series.flatMap((s) => s.values).filter((v) => Number.isFinite(v) && (!options.log || v > 0));
  if (!all.length) {
    svgText(svg, width / 2, height / 2, "no data", { "text-anchor": "middle" });
    return;
  }
  const transform = options.log ? Math.log10 : (v) => v;
  let low = Math.min(...all.map(transform)), high = Math.max(...all.map(transform));
  if (high === low) { high += 1; low -= 1; }
  const px = (i, n) => left + ((width - left - right) * (n > 1 ? i / (n - 1) : 0.5));
  const py = (v) => top + (height - top - bottom) * (1 - (transform(v) - low) / (high - low));
  svgElement("line", { x1: left, y1: top, x2: left, y2: height - bottom, stroke: "#999" }, svg);
  svgElement("line", { x1: left, y1: height - bottom, x2: width - right, y2: height - bottom, stroke: "#999" }, svg);
  for (let k = 0; k <= 4; k++) {
    const v = low + ((high - low) * k) / 4;
    const shown = options.log ? Math.pow(10, v) : v;
    const yy = top + (height - top - bottom) * (1 - k / 4);
    svgText(svg, left - 4, yy + 4, formatNumber(shown), { "text-anchor": "end" });
  }
  svgText(svg, left + (width - left) / 2, height - 4, options.xlabel || "layer", { "text-anchor": "middle" });
  series.forEach((s, index) => {
    const points = s.values.map((v, i) => [px(i, s.values.length), v])
      .filter(([, v]) => Number.isFinite(v) && (!options.log || v > 0))
      .map(([x, v]) => `${x.toFixed(1)},${py(v).toFixed(1)}`);
    svgElement("polyline", {
      points: points.join(" "), fill: "none", stroke: s.color || PALETTE[index % PALETTE.length],
      "stroke-width": 2, "stroke-dasharray": s.dashed ? "5 3" : "",
    }, svg);
    svgText(svg, width - right - 4, top + 14 + 14 * index, s.label, {
      "text-anchor": "end", fill: s.color || PALETTE[index % PALETTE.length],
    });
  });
}

function formatNumber(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "-";
  const magnitude = Math.abs(value);
  if (magnitude !== 0 && (magnitude >= 1e4 || magnitude < 1e-3)) return value.toExponential(2);
  return String(Number(value.toPrecision(4)));
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

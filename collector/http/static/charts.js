// Tiny hand-written SVG line charts: no library, no build step.
"use strict";
const COLORS = ["#2f6fde", "#e0761b", "#1f8a4c", "#c0392b", "#7b4fbb", "#0e9aa7", "#b5842b", "#d0457d", "#666"];

function lineChart(element, series, options) {
  // series: [{name, values: [number|null]}]; options: {firstTs, stepS, unit}
  const width = 600, height = 180, left = 44, bottom = 18, top = 6;
  const all = series.flatMap(s => s.values.filter(v => v !== null));
  const max = Math.max(1e-9, ...all) * 1.1;
  const points = Math.max(1, ...series.map(s => s.values.length));
  const x = i => left + (width - left - 4) * (points <= 1 ? 0 : i / (points - 1));
  const y = v => top + (height - top - bottom) * (1 - v / max);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.appendChild(node);
    return node;
  };
  for (const fraction of [0, 0.5, 1]) {
    const value = max / 1.1 * fraction;
    add("line", {x1: left, x2: width, y1: y(value), y2: y(value), stroke: "#e3e6ea"});
    add("text", {x: 2, y: y(value) + 4, "font-size": 10, fill: "#7a8394"}, formatNumber(value));
  }
  if (options.firstTs !== undefined) {
    for (const i of [0, Math.floor((points - 1) / 2), points - 1]) {
      const when = new Date((options.firstTs + i * options.stepS) * 1000);
      add("text", {x: Math.min(x(i), width - 34), y: height - 4, "font-size": 10, fill: "#7a8394"},
          when.toTimeString().slice(0, 5));
    }
  }
  series.forEach((s, index) => {
    let path = "", pen = false;
    s.values.forEach((v, i) => {
      if (v === null) { pen = false; return; }
      path += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    s.values.forEach((v, i) => {  // a point with no neighbour draws no line: mark it
      if (v !== null && (s.values[i - 1] ?? null) === null && (s.values[i + 1] ?? null) === null)
        add("circle", {cx: x(i), cy: y(v), r: 2.5, fill: COLORS[index % COLORS.length]});
    });
    if (path) add("path", {d: path, fill: "none", stroke: COLORS[index % COLORS.length], "stroke-width": 1.6,
                           "stroke-dasharray": s.dashed ? "4 3" : "none"});
  });
  const legend = document.createElement("div");
  legend.className = "legend";
  series.forEach((s, index) => {
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = COLORS[index % COLORS.length];
    item.append(swatch, s.name);
    legend.appendChild(item);
  });
  element.replaceChildren(svg, legend);
  if (!series.length) element.append("no data in the last hour");
}

function formatNumber(value) {
  if (value >= 1000) return (value / 1000).toFixed(1) + "k";
  if (value >= 10) return value.toFixed(0);
  return value.toFixed(value >= 1 ? 1 : 2);
}

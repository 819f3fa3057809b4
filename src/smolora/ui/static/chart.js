// Hand-written SVG charts: a line chart (loss curves) and a bar chart (token-length histogram).
// No library: a few dozen lines of scaling, ticks and paths.

const NS = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// About `count` round tick values between lo and hi.
function ticks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function label(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(1);
  return +v.toPrecision(4) + "";
}

function frame(svg) {
  const W = svg.clientWidth || 600;
  const H = svg.clientHeight || 260;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  return { W, H, pad: { l: 52, r: 14, t: 26, b: 34 } };
}

function axes(svg, f, x, y, xt, yt, xLabel) {
  const { W, H, pad } = f;
  for (const v of yt) {
    const yy = y(v);
    svg.append(svgEl("line", { x1: pad.l, x2: W - pad.r, y1: yy, y2: yy, class: "grid-line" }));
    svg.append(svgEl("text", { x: pad.l - 6, y: yy + 4, "text-anchor": "end", class: "tick" }, label(v)));
  }
  for (const v of xt) {
    svg.append(svgEl("text", { x: x(v), y: H - pad.b + 16, "text-anchor": "middle", class: "tick" }, label(v)));
  }
  svg.append(svgEl("line", { x1: pad.l, x2: W - pad.r, y1: H - pad.b, y2: H - pad.b, class: "axis" }));
  if (xLabel) svg.append(svgEl("text", { x: W - pad.r, y: H - 4, "text-anchor": "end", class: "axis-label" }, xLabel));
}

// series: [{name, color, points: [[x, y], ...], dots: bool}]
export function lineChart(svg, series, { xLabel = "step", empty = "waiting for the first logged step…" } = {}) {
  const f = frame(svg);
  const { W, H, pad } = f;
  const all = series.flatMap((s) => s.points).filter((p) => Number.isFinite(p[1]));
  svg.dataset.points = String(series.length ? series[0].points.length : 0);
  if (!all.length) {
    svg.append(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, empty));
    return;
  }
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (x1 === x0) x1 = x0 + 1;
  const span = y1 - y0 || Math.abs(y1) * 0.1 || 1;
  y0 -= span * 0.05;
  y1 += span * 0.05;
  const x = (v) => pad.l + ((v - x0) / (x1 - x0)) * (W - pad.l - pad.r);
  const y = (v) => H - pad.b - ((v - y0) / (y1 - y0)) * (H - pad.t - pad.b);
  axes(svg, f, x, y, ticks(x0, x1, Math.max(2, Math.floor(W / 90))), ticks(y0, y1, 5), xLabel);
  let lx = pad.l + 4;
  for (const s of series) {
    const pts = s.points.filter((p) => Number.isFinite(p[1]));
    if (!pts.length) continue;
    if (pts.length > 1 && !s.dotsOnly) {
      const d = pts.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
      svg.append(svgEl("path", { d, fill: "none", stroke: s.color, "stroke-width": 2, class: "series" }));
    }
    if (s.dots || pts.length === 1 || s.dotsOnly) {
      for (const p of pts) svg.append(svgEl("circle", { cx: x(p[0]), cy: y(p[1]), r: 3.5, fill: s.color }));
    }
    const last = pts[pts.length - 1];
    svg.append(svgEl("rect", { x: lx, y: 7, width: 10, height: 10, rx: 2, fill: s.color }));
    const t = svgEl("text", { x: lx + 14, y: 16, class: "legend" }, `${s.name} ${label(last[1])}`);
    svg.append(t);
    lx += 14 + (t.getComputedTextLength ? t.getComputedTextLength() : 80) + 18;
  }
}

// counts: per-bin counts of width `width`; a dashed line marks max_length.
export function barChart(svg, { counts, width, max_length }) {
  const f = frame(svg);
  const { W, H, pad } = f;
  const xmax = counts.length * width;
  const ymax = Math.max(1, ...counts);
  const x = (v) => pad.l + (v / xmax) * (W - pad.l - pad.r);
  const y = (v) => H - pad.b - (v / ymax) * (H - pad.t - pad.b);
  axes(svg, f, x, y, ticks(0, xmax, 6), ticks(0, ymax, 4).filter(Number.isInteger), "tokens");
  counts.forEach((c, i) => {
    if (!c) return;
    const over = i * width >= max_length;
    svg.append(
      svgEl("rect", {
        x: x(i * width) + 1,
        y: y(c),
        width: Math.max(1, x(width) - x(0) - 2),
        height: H - pad.b - y(c),
        class: over ? "bar bar-over" : "bar",
      }),
    );
  });
  const mx = x(max_length);
  svg.append(svgEl("line", { x1: mx, x2: mx, y1: pad.t - 8, y2: H - pad.b, class: "limit" }));
  svg.append(svgEl("text", { x: mx - 4, y: pad.t - 12, "text-anchor": "end", class: "legend" }, `max_length ${max_length}`));
  svg.dataset.bars = String(counts.length);
}

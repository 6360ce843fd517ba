// Line charts over sessions, drawn as inline SVG. Every text reaches the DOM through textContent.

const SVG_NS = "http://www.w3.org/2000/svg";
const WIDTH = 400;
const HEIGHT = 210;
const MARGIN = { top: 12, right: 16, bottom: 36, left: 46 };
const MAX_X_LABELS = 10;

function svgElement(tag, attributes = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) {
    node.setAttribute(name, String(value));
  }
  return node;
}

function svgText(text, attributes) {
  const node = svgElement("text", attributes);
  node.textContent = text;
  return node;
}

function isNumber(value) {
  return typeof value === "number" && Number.isFinite(value);
}

// Returns evenly spaced tick values from 0 to a round number at or above maxValue.
export function niceTicks(maxValue, count = 4) {
  const top = maxValue > 0 ? maxValue : 1;
  const rough = top / count;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((factor) => factor * power).find((candidate) => candidate >= rough);
  const ticks = [];
  for (let index = 0; index * step <= top + step * 1e-9 || ticks.length < 2; index += 1) {
    ticks.push(Number((index * step).toPrecision(12)));
  }
  if (ticks[ticks.length - 1] < top) {
    ticks.push(Number((ticks.length * step).toPrecision(12)));
  }
  return ticks;
}

// Returns the SVG path of one series, broken where a session has no value.
function linePath(values, xOf, yOf) {
  const parts = [];
  let penDown = false;
  values.forEach((value, index) => {
    if (!isNumber(value)) {
      penDown = false;
      return;
    }
    parts.push(`${penDown ? "L" : "M"}${xOf(index).toFixed(1)},${yOf(value).toFixed(1)}`);
    penDown = true;
  });
  return parts.join(" ");
}

function formatTick(value) {
  return String(Number(value.toPrecision(6)));
}

function drawGrid(svg, ticks, yOf) {
  for (const tick of ticks) {
    const y = yOf(tick).toFixed(1);
    svg.append(svgElement("line", { class: "grid", x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y, y2: y }));
    svg.append(svgText(formatTick(tick), { class: "tick-label", x: MARGIN.left - 6, y, "text-anchor": "end", dy: "0.32em" }));
  }
}

function drawXAxis(svg, points, xOf) {
  const baseline = HEIGHT - MARGIN.bottom;
  svg.append(svgElement("line", { class: "axis", x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: baseline, y2: baseline }));
  const every = Math.ceil(points.length / MAX_X_LABELS);
  points.forEach((point, index) => {
    if (index % every !== 0 && index !== points.length - 1) {
      return;
    }
    svg.append(svgText(String(index + 1), { class: "tick-label", x: xOf(index).toFixed(1), y: baseline + 14, "text-anchor": "middle" }));
  });
  svg.append(svgText("session, oldest to newest", { class: "axis-title", x: (MARGIN.left + WIDTH - MARGIN.right) / 2, y: HEIGHT - 4, "text-anchor": "middle" }));
}

function drawReference(svg, reference, yOf) {
  const y = yOf(reference.value).toFixed(1);
  svg.append(svgElement("line", { class: "reference", x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y, y2: y }));
  svg.append(svgText(reference.label, { class: "reference-label", x: WIDTH - MARGIN.right - 2, y: Number(y) - 4, "text-anchor": "end" }));
}

function drawSeries(svg, series, points, xOf, yOf, format) {
  svg.append(svgElement("path", { class: `line series-${series.key}`, d: linePath(series.values, xOf, yOf), "data-series": series.key }));
  series.values.forEach((value, index) => {
    if (!isNumber(value)) {
      return;
    }
    const point = points[index];
    const circle = svgElement("circle", {
      class: `point series-${series.key}`,
      cx: xOf(index).toFixed(1),
      cy: yOf(value).toFixed(1),
      r: 3.5,
      "data-series": series.key,
      "data-session-id": point.sessionId,
      "data-value": value,
    });
    const tooltip = svgElement("title");
    tooltip.textContent = `Session ${index + 1}: ${point.description}\n${series.label}: ${format(value)}`;
    circle.append(tooltip);
    svg.append(circle);
  });
}

/**
 * Draws one line chart with one x position per session.
 *
 * points: [{sessionId, description}] in time order; series: [{key, label, values}] with one value (or
 * null) per point; reference: optional {value, label} drawn as a dashed horizontal line.
 */
export function lineChart({ name, points, series, format, reference = null }) {
  const svg = svgElement("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", class: "chart-svg", "data-chart": name });
  const values = series.flatMap((item) => item.values).filter(isNumber);
  if (points.length === 0 || values.length === 0) {
    svg.append(svgText("no data in these sessions", { class: "empty-chart", x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle" }));
    return svg;
  }

  const ticks = niceTicks(Math.max(...values, reference ? reference.value : 0));
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const yMax = ticks[ticks.length - 1];
  const xOf = (index) => (points.length === 1 ? MARGIN.left + plotWidth / 2 : MARGIN.left + (index * plotWidth) / (points.length - 1));
  const yOf = (value) => MARGIN.top + plotHeight * (1 - value / yMax);

  drawGrid(svg, ticks, yOf);
  drawXAxis(svg, points, xOf);
  if (reference) {
    drawReference(svg, reference, yOf);
  }
  for (const item of series) {
    drawSeries(svg, item, points, xOf, yOf, format);
  }
  return svg;
}

// DOM builders for the dashboard. Text from the API is only ever set through textContent or attributes.

export const DASH = "\u2013";

// Creates an element with options {className, text, attributes} and children that are nodes or strings.
export function el(tag, options = {}, children = []) {
  const node = document.createElement(tag);
  if (options.className) {
    node.className = options.className;
  }
  if (options.text !== undefined && options.text !== null) {
    node.textContent = String(options.text);
  }
  for (const [name, value] of Object.entries(options.attributes || {})) {
    node.setAttribute(name, String(value));
  }
  for (const child of children) {
    node.append(child);
  }
  return node;
}

function isNumber(value) {
  return typeof value === "number" && Number.isFinite(value);
}

export function formatNumber(value, digits) {
  return isNumber(value) ? value.toFixed(digits) : DASH;
}

export function formatInteger(value) {
  return isNumber(value) ? String(Math.round(value)) : DASH;
}

export function formatPercent(value) {
  return isNumber(value) ? `${(value * 100).toFixed(1)} %` : DASH;
}

// Formats Unix seconds as local "YYYY-MM-DD HH:MM".
export function formatTime(seconds) {
  if (!isNumber(seconds)) {
    return DASH;
  }
  const date = new Date(seconds * 1000);
  const pad = (number) => String(number).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

// Replaces the children of a container with the given nodes.
export function fill(container, ...nodes) {
  container.replaceChildren(...nodes);
}

export function messageBox(kind, text) {
  return el("p", { className: `message message-${kind}`, text, attributes: { "data-kind": kind } });
}

export function card(metric, label, value, detail = "") {
  return el("div", { className: "card", attributes: { "data-metric": metric } }, [
    el("div", { className: "card-label", text: label }),
    el("div", { className: "card-value", text: value }),
    el("div", { className: "card-detail", text: detail }),
  ]);
}

export function badge(status) {
  const text = status || "unknown";
  return el("span", { className: `badge badge-${text.replace(/[^a-z_]/g, "")}`, text });
}

// Builds a table with one row per item; each column is {label, numeric, value(row) -> string | Node}.
export function table(name, columns, rows) {
  const head = el("tr", {}, columns.map((column) => el("th", { className: column.numeric ? "numeric" : "", text: column.label })));
  const body = rows.map((row) =>
    el(
      "tr",
      {},
      columns.map((column) => {
        const value = column.value(row);
        const cell = el("td", { className: column.numeric ? "numeric" : "" });
        cell.append(value instanceof Node ? value : String(value));
        return cell;
      }),
    ),
  );
  return el("table", { className: "data-table", attributes: { "data-table": name } }, [el("thead", {}, [head]), el("tbody", {}, body)]);
}

// Renders the legend of a chart from its series.
export function legend(series) {
  return series.map((item) =>
    el("span", { className: "legend-item" }, [el("span", { className: `swatch series-${item.key}` }), item.label]),
  );
}

// Renders the parts of one partner's view: summary cards, charts, adapter versions and training jobs.

import { lineChart } from "./charts.js";
import {
  DASH, badge, card, fill, formatInteger, formatNumber, formatPercent, formatTime, legend, messageBox, table,
} from "./render.js";

export function renderCards(container, note, metrics) {
  const totals = metrics.totals;
  const adapter = metrics.adapter;
  const ownVersion = adapter.active_version === null ? "no own adapter active" : `own version ${adapter.active_version} active`;
  fill(
    container,
    card("partner", "Partner", metrics.partner_id),
    card("adapter", "Adapter in use", adapter.in_use, ownVersion),
    card("sessions", "Sessions", formatInteger(totals.sessions)),
    card("turns", "Turns", formatInteger(totals.turns)),
    card("model-tokens", "Model tokens / turn", formatNumber(totals.model_tokens_per_turn, 1)),
    card("partner-tokens", "Partner tokens / turn", formatNumber(totals.partner_tokens_per_turn, 1)),
    card("rementions", "Re-mentions", formatInteger(totals.rementions)),
    card("compression", "Re-mention compression", formatNumber(totals.remention_compression, 2), "later / first mention, words"),
    card("planning-rate", "Planning tokens / turn", formatNumber(totals.planning_token_rate, 2), "local model turns"),
  );
  const chartedSessions = metrics.sessions.length;
  note.textContent = `Cards and charts cover the ${chartedSessions} most recent of the partner's ${formatInteger(metrics.session_count)} sessions.`;
}

function drawChart(figureId, options) {
  const figure = document.getElementById(figureId);
  fill(figure.querySelector(".legend"), ...legend(options.series));
  fill(figure.querySelector(".chart-body"), lineChart(options));
}

export function renderCharts(sessions) {
  const points = sessions.map((session) => ({
    sessionId: session.session_id,
    description: `${session.session_id}, ${formatTime(session.created_at)}, ${session.turns} turns, adapters ${session.adapters.join(", ") || DASH}`,
  }));
  const values = (field) => sessions.map((session) => session[field]);

  drawChart("chart-tokens", {
    name: "tokens",
    points,
    format: (value) => formatNumber(value, value >= 100 ? 0 : 1),
    series: [
      { key: "model", label: "model", values: values("model_tokens_per_turn") },
      { key: "partner", label: "partner", values: values("partner_tokens_per_turn") },
    ],
  });
  drawChart("chart-compression", {
    name: "compression",
    points,
    format: (value) => formatNumber(value, 2),
    reference: { value: 1, label: "same length" },
    series: [{ key: "compression", label: "later / first mention", values: values("remention_compression") }],
  });
  drawChart("chart-planning", {
    name: "planning",
    points,
    format: (value) => formatNumber(value, 2),
    series: [{ key: "planning", label: "planning tokens / turn", values: values("planning_token_rate") }],
  });
}

export function renderAdapters(container, body) {
  const adapters = [...body.data].sort((left, right) => right.version - left.version);
  if (adapters.length === 0) {
    fill(container, messageBox("empty", "No adapter versions yet. A training job publishes one when it succeeds."));
    return;
  }
  const metric = (row, name) => (row.metrics || {})[name];
  const columns = [
    { label: "Version", value: (row) => row.id },
    { label: "Status", value: (row) => badge(row.status) },
    { label: "Created", value: (row) => formatTime(row.created_at) },
    { label: "Pairs", numeric: true, value: (row) => formatInteger(metric(row, "pairs")) },
    { label: "Held-out pairs", numeric: true, value: (row) => formatInteger(metric(row, "held_out_pairs")) },
    { label: "Held-out accuracy", numeric: true, value: (row) => formatPercent(metric(row, "held_out_accuracy")) },
    { label: "Held-out margin", numeric: true, value: (row) => formatNumber(metric(row, "held_out_margin"), 3) },
    { label: "Train loss", numeric: true, value: (row) => formatNumber(metric(row, "train_loss"), 3) },
    { label: "Started from", value: (row) => metric(row, "started_from") || DASH },
    { label: "Job", value: (row) => row.job_id || DASH },
  ];
  fill(container, table("adapters", columns, adapters));
}

export function renderJobs(container, { jobs, scanned, truncated }) {
  const parts = [];
  if (jobs.length === 0) {
    parts.push(messageBox("empty", "No training jobs for this partner."));
  } else {
    const columns = [
      { label: "Job", value: (job) => job.id },
      { label: "Status", value: (job) => badge(job.status) },
      { label: "Created", value: (job) => formatTime(job.created_at) },
      { label: "Finished", value: (job) => formatTime(job.finished_at) },
      { label: "Adapter version", numeric: true, value: (job) => formatInteger(job.adapter_version) },
      { label: "Error", value: (job) => (job.error && job.error.message ? job.error.message : DASH) },
    ];
    parts.push(table("jobs", columns, jobs));
  }
  if (truncated) {
    parts.push(messageBox("info", `Only the newest ${scanned} jobs of all partners were scanned.`));
  }
  fill(container, ...parts);
}

export function renderFailure(container, subject, error) {
  fill(container, messageBox("error", `Could not load ${subject}: ${error.message}`));
}

// The partner dashboard: loads the gateway's JSON API and renders cards, charts and tables.
// body[data-state] is "loading" until a load finishes, then "ready", "empty" or "error", so tests can wait on it.

import { el, fill, messageBox } from "./render.js";
import { renderAdapters, renderCards, renderCharts, renderFailure, renderJobs } from "./sections.js";

// The API lives next to /dashboard, also when a proxy serves the gateway under a path prefix.
const API_BASE = window.location.pathname.replace(/\/dashboard\/?$/, "");
// The picker lists at most PARTNER_PAGE_SIZE * MAX_PARTNER_PAGES partners, but ?partner=<id> selects any other.
const PARTNER_PAGE_SIZE = 500;
const MAX_PARTNER_PAGES = 20;
const JOB_PAGE_SIZE = 100;
// TODO: GET /v1/fine_tuning/jobs has no partner filter, so the page scans at most this many pages of all jobs,
// newest first. A partner_id query parameter on that route would remove the scan.
const MAX_JOB_PAGES = 20;
const SESSION_LIMITS = ["20", "50", "100", "500"];

const nodes = {
  status: document.getElementById("status"),
  view: document.getElementById("partner-view"),
  picker: document.getElementById("partner-select"),
  sessionLimit: document.getElementById("session-limit"),
  refresh: document.getElementById("refresh"),
  cards: document.getElementById("cards"),
  note: document.getElementById("metrics-note"),
  adapters: document.getElementById("adapters"),
  jobs: document.getElementById("jobs"),
};

class ApiError extends Error {
  constructor(path, status, message, code = null) {
    super(status ? `${message} (HTTP ${status} from ${path})` : message);
    this.status = status;
    this.code = code;
  }
}

// Fetches JSON from the API. A failed request raises ApiError with the message of OpenAI's error envelope, if any.
async function getJSON(path) {
  let response;
  try {
    response = await fetch(API_BASE + path, { headers: { Accept: "application/json" } });
  } catch (error) {
    throw new ApiError(path, 0, `the gateway did not respond to ${path}: ${error.message}`);
  }

  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message = body && body.error && typeof body.error.message === "string" ? body.error.message : "request failed";
    const code = body && body.error && typeof body.error.code === "string" ? body.error.code : null;
    throw new ApiError(path, response.status, message, code);
  }
  if (body === null) {
    throw new ApiError(path, response.status, "the response is not JSON");
  }
  return body;
}

function setState(state, statusText, kind = "info") {
  document.body.dataset.state = state;
  nodes.status.textContent = statusText;
  nodes.status.dataset.kind = kind;
  nodes.status.hidden = statusText === "";
}

async function loadPartners() {
  const partners = [];
  let after = null;
  for (let page = 0; page < MAX_PARTNER_PAGES; page += 1) {
    const query = new URLSearchParams({ limit: String(PARTNER_PAGE_SIZE) });
    if (after !== null) {
      query.set("after", after);
    }
    const body = await getJSON(`/v1/partners?${query}`);
    partners.push(...body.data);
    if (!body.has_more || body.data.length === 0) {
      break;
    }
    after = body.data[body.data.length - 1].id;
  }
  return partners;
}

// Returns the partner's jobs (newest first), the number of jobs scanned and whether the scan missed older jobs.
async function loadJobs(partnerId) {
  const jobs = [];
  let scanned = 0;
  let after = null;
  for (let page = 0; page < MAX_JOB_PAGES; page += 1) {
    const query = new URLSearchParams({ limit: String(JOB_PAGE_SIZE) });
    if (after !== null) {
      query.set("after", after);
    }
    const body = await getJSON(`/v1/fine_tuning/jobs?${query}`);
    jobs.push(...body.data.filter((job) => job.partner_id === partnerId));
    scanned += body.data.length;
    if (!body.has_more || body.data.length === 0) {
      return { jobs, scanned, truncated: false };
    }
    after = body.data[body.data.length - 1].id;
  }
  return { jobs, scanned, truncated: true };
}

// Loads and renders one partner. Each part shows its own error, and body[data-state] records whether all loaded.
async function showPartner(partnerId) {
  setState("loading", `Loading partner ${partnerId}…`);
  nodes.view.hidden = false;
  const sessions = SESSION_LIMITS.includes(nodes.sessionLimit.value) ? nodes.sessionLimit.value : "50";
  const encoded = encodeURIComponent(partnerId);
  const [metrics, adapters, jobs] = await Promise.allSettled([
    getJSON(`/v1/partners/${encoded}/metrics?sessions=${sessions}`),
    getJSON(`/v1/partners/${encoded}/adapters`),
    loadJobs(partnerId),
  ]);

  // A partner with adapters but no sessions yet (an imported adapter, say) has no metrics: that is not an error.
  const noSessions = metrics.status === "rejected" && metrics.reason.code === "partner_not_found";
  if (metrics.status === "fulfilled") {
    renderCards(nodes.cards, nodes.note, metrics.value);
    renderCharts(metrics.value.sessions);
  } else {
    const text = noSessions
      ? `Partner ${partnerId} has no sessions yet, so there are no metrics.`
      : `Could not load the metrics of partner ${partnerId}: ${metrics.reason.message}`;
    fill(nodes.cards, messageBox(noSessions ? "empty" : "error", text));
    nodes.note.textContent = "";
    for (const figure of document.querySelectorAll(".chart")) {
      fill(figure.querySelector(".legend"));
      fill(figure.querySelector(".chart-body"), messageBox("empty", "no metrics"));
    }
  }
  if (adapters.status === "fulfilled") {
    renderAdapters(nodes.adapters, adapters.value);
  } else {
    renderFailure(nodes.adapters, "adapter versions", adapters.reason);
  }
  if (jobs.status === "fulfilled") {
    renderJobs(nodes.jobs, jobs.value);
  } else {
    renderFailure(nodes.jobs, "training jobs", jobs.reason);
  }

  const failed = [metrics, adapters, jobs].filter(
    (result) => result.status === "rejected" && !(result === metrics && noSessions),
  );
  if (failed.length > 0) {
    setState("error", `${failed.length} of 3 requests failed; see the messages below.`, "error");
  } else {
    setState("ready", "");
  }
}

function fillPicker(partners, selected) {
  const options = partners.map((partner) => el("option", { text: `${partner.id} (${partner.session_count} sessions)`, attributes: { value: partner.id } }));
  if (!partners.some((partner) => partner.id === selected)) {
    options.unshift(el("option", { text: `${selected} (not listed)`, attributes: { value: selected } }));
  }
  fill(nodes.picker, ...options);
  nodes.picker.value = selected;
  nodes.picker.disabled = false;
}

// Keeps the page URL in step with the controls, so a reload or a shared link shows the same view.
function updateUrl(name, value) {
  const url = new URL(window.location.href);
  url.searchParams.set(name, value);
  window.history.replaceState(null, "", url);
}

async function start() {
  const params = new URLSearchParams(window.location.search);
  if (SESSION_LIMITS.includes(params.get("sessions"))) {
    nodes.sessionLimit.value = params.get("sessions");
  }

  let partners;
  try {
    partners = await loadPartners();
  } catch (error) {
    setState("error", `Could not load partners: ${error.message}`, "error");
    return;
  }

  const requested = params.get("partner");
  if (partners.length === 0 && !requested) {
    setState("empty", "No partners yet. A partner appears after its first chat completion with an X-Partner-ID header (or a user field).");
    return;
  }
  const partnerId = requested || partners[0].id;
  fillPicker(partners, partnerId);
  await showPartner(partnerId);
}

nodes.picker.addEventListener("change", () => {
  updateUrl("partner", nodes.picker.value);
  showPartner(nodes.picker.value);
});
nodes.sessionLimit.addEventListener("change", () => {
  updateUrl("sessions", nodes.sessionLimit.value);
  if (!nodes.picker.disabled) {
    showPartner(nodes.picker.value);
  }
});
nodes.refresh.addEventListener("click", () => {
  if (nodes.picker.disabled) {
    start();
  } else {
    showPartner(nodes.picker.value);
  }
});

start();

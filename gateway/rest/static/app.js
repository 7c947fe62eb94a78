// The auditflow status page: plain JavaScript over the REST API, no build step.
//
// Every call needs credentials. Either the user pastes a token (an API token or a JWT), which
// the page keeps in sessionStorage, so that it dies with the tab, and sends as
// `Authorization: Bearer <token>`; or a trusted proxy in front of the gateway identifies the user
// and the page sends nothing. The token is never written to a URL, to the page or to the console.
"use strict";

const TERMINAL = new Set(["COMPLETED", "FAILED", "REJECTED", "CANCELLED"]);
const PROCESSING = new Set(["APPROVED", "QUEUED", "RUNNING"]);
// People's roles, each including the rights of the ones before it (as the server's policy has it).
const ROLES = ["viewer", "submitter", "approver", "admin"];
const TOKEN_KEY = "auditflow.token";
const RETRY_MIN_MS = 1000;  // until the server's `retry:` field says otherwise
const RETRY_MAX_MS = 5000;

const $ = (selector) => document.querySelector(selector);
const state = {
  session: 0,       // bumped at every sign-in and sign-out: answers to an older session are dropped
  token: null,      // the bearer token; null when signed out or identified by a proxy
  me: null,         // the /whoami answer while signed in
  selected: null,   // the workflow shown in the detail view
  workflow: null,   // that workflow as last read (who submitted it decides who may cancel it)
  stream: null,     // the open status stream, see openStream()
  seen: new Set(),  // event sequences already in the event log
  findings: null,   // the findings shown: {workflowId, token of the next page, shown}
};

const shortStatus = (status) => String(status || "").replace(/^WORKFLOW_STATUS_/, "");
const shortEvent = (type) => String(type || "").replace(/^EVENT_TYPE_/, "");
const workflowPath = (workflowId, rest = "") => `/workflows/${encodeURIComponent(workflowId)}${rest}`;

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function showError(selector, message) {
  const node = $(selector);
  node.textContent = message || "";
  node.hidden = !message;
}

// --- calling the API ------------------------------------------------------------------------

// sessionStorage can be switched off by the browser; the page then works for this load only.
function storedToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch (_) {
    return null;
  }
}

function storeToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch (_) { /* not kept: the user signs in again after a reload */ }
}

function withAuth(headers, token = state.token) {
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

async function readJson(response) {
  try {
    return await response.json();
  } catch (_) {
    return { message: `HTTP ${response.status}` };
  }
}

const errorText = (status, body) => `${body.status || status}: ${body.message || "request failed"}`;

// A 401 means the credentials stopped working (an expired JWT, a revoked token): back to the
// sign-in form with the server's reason. Answers to an earlier session change nothing.
function onUnauthenticated(session, body) {
  if (session !== state.session) return;
  storeToken(null);
  showSignIn(body.message || "Please sign in again.");
}

async function api(method, path, { body } = {}) {
  const session = state.session;
  const headers = withAuth({ Accept: "application/json" });
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (_) {
    throw new Error("the server did not answer; try again");
  }
  const data = await readJson(response);
  const error = new Error(errorText(response.status, data));
  if (session !== state.session) {
    error.quiet = true;  // the user signed out or in meanwhile: nobody is waiting for this
    throw error;
  }
  if (response.status === 401) {
    onUnauthenticated(session, data);
    error.quiet = true;  // the sign-in form shows it
    throw error;
  }
  if (!response.ok) throw error;
  return data;
}

function report(selector, error) {
  if (!error.quiet) showError(selector, error.message);
}

// --- sign-in --------------------------------------------------------------------------------

// Ask the server who `token` is; with no token a trusted proxy may still have identified us.
async function whoami(token) {
  const response = await fetch("/whoami", { headers: withAuth({ Accept: "application/json" }, token) });
  return { ok: response.ok, status: response.status, data: await readJson(response) };
}

async function start() {
  const session = state.session;
  const token = storedToken();
  let answer;
  try {
    answer = await whoami(token);
  } catch (_) {
    if (session === state.session) showSignIn("The server did not answer; reload the page to try again.");
    return;
  }
  if (session !== state.session) return;  // the user signed in meanwhile
  if (answer.ok) {
    signedIn(answer.data, token);
    return;
  }
  storeToken(null);
  // Without a token, a 401 is just a first visit; a refused stored token (expired) says why.
  showSignIn(token ? answer.data.message : "");
}

// People paste "Bearer xyz" as often as "xyz".
const cleanToken = (text) => text.trim().replace(/^bearer\s+/i, "");

async function signIn(event) {
  event.preventDefault();
  const input = $("#token");
  const token = cleanToken(input.value);
  input.value = "";  // the secret does not stay in the form
  if (!token) {
    showError("#signin-error", "Paste a token first.");
    return;
  }
  $("#sign-in").disabled = true;
  try {
    const answer = await whoami(token);
    if (answer.ok) {
      storeToken(token);
      signedIn(answer.data, token);
    } else {
      showError("#signin-error", errorText(answer.status, answer.data));
      input.focus();
    }
  } catch (_) {
    showError("#signin-error", "The server did not answer; try again.");
  } finally {
    $("#sign-in").disabled = false;
  }
}

async function signOut() {
  if (!state.token) {
    // The proxy in front of auditflow signed us in; the page holds nothing it could forget.
    showNote("You are signed in through the sign-in proxy in front of auditflow: sign out there.");
    return;
  }
  storeToken(null);
  showSignIn("");
  // A proxy may still identify the user without the token: ask again.
  await start();
  if (state.me) showNote("The token is forgotten; the sign-in proxy in front of auditflow still identifies you.");
  else setAccountStatus("Signed out.");
}

function describeVia(via) {
  const text = String(via || "");
  const colon = text.indexOf(":");
  const kind = colon < 0 ? text : text.slice(0, colon);
  const what = colon < 0 ? "" : text.slice(colon + 1);
  if (kind === "token") return `Authenticated with the API token “${what}”.`;
  if (kind === "jwt") return `Authenticated with a JWT from ${what}.`;
  if (kind === "proxy") return `Authenticated by the sign-in proxy at ${what}.`;
  return text ? `Authenticated as ${text}.` : "";
}

function setAccountStatus(message) {
  $("#account-status").textContent = message;
  $("#account-status").hidden = !message;
}

function showNote(message) {
  $("#account-note").textContent = message;
  $("#account-note").hidden = !message;
}

function signedIn(me, token) {
  state.session += 1;
  state.token = token || null;
  state.me = me;
  setAccountStatus("");
  showNote("");
  $("#account-heading").textContent = "Account";
  $("#who-name").textContent = me.principal;
  $("#who-roles").textContent = rolesText();
  $("#who-via").textContent = describeVia(me.authenticated_by);
  $("#signin-form").hidden = true;
  showError("#signin-error", "");
  $("#signed-in").hidden = false;
  $("#submit").hidden = false;
  $("#workflows").hidden = false;
  applyRoles();
  if (!$("#plan-json").value) loadSamplePlan();
  refreshList();
}

function showSignIn(message) {
  state.session += 1;
  state.token = null;
  state.me = null;
  clearDetail();
  $("#workflow-table tbody").replaceChildren();
  for (const selector of ["#list-error", "#submit-error"]) showError(selector, "");
  for (const selector of ["#signed-in", "#submit", "#workflows"]) $(selector).hidden = true;
  setAccountStatus("");
  $("#account-heading").textContent = "Sign in";
  $("#signin-form").hidden = false;
  showError("#signin-error", message);
  $("#token").focus();
}

// --- what the caller may do -----------------------------------------------------------------

// The caller's highest role as an index into ROLES; -1 without any.
function rank() {
  const roles = (state.me && state.me.roles) || [];
  return Math.max(-1, ...roles.map((role) => ROLES.indexOf(role)));
}

const rolesText = () => ((state.me && state.me.roles) || []).join(", ") || "no role";

// Names compare as the server compares them: Unicode-normalised, case-insensitive.
const nameKey = (name) => String(name || "").normalize("NFKC").toLowerCase();

const may = {
  submit: () => rank() >= ROLES.indexOf("submitter"),
  decide: () => rank() >= ROLES.indexOf("approver"),
  // A submitter cancels what they submitted; an admin anything.
  cancel: (workflow) =>
    rank() >= ROLES.indexOf("admin") ||
    (may.submit() && Boolean(workflow) && nameKey(workflow.created_by) === nameKey(state.me.principal)),
};

// Hide or disable what the caller's roles do not allow. Only a courtesy: the server decides,
// and the page shows its 403 if it refuses.
function applyRoles() {
  const canSubmit = may.submit();
  $("#plan-fields").disabled = !canSubmit;
  $("#submit-note").hidden = canSubmit;
  $("#submit-note").textContent = `Submitting a plan needs the submitter role; you have ${rolesText()}.`;
  const canDecide = may.decide();
  $("#decision-controls").hidden = !canDecide;
  $("#decision-note").hidden = canDecide;
  $("#decision-note").textContent = `Approving or rejecting needs the approver role; you have ${rolesText()}.`;
  const canCancel = may.cancel(state.workflow);
  $("#cancel").hidden = !canCancel;
  $("#cancel-awaiting").hidden = !canCancel;
}

// --- submit ---------------------------------------------------------------------------------

async function loadSamplePlan() {
  try {
    const plan = await api("GET", "/ui/sample-plan");
    $("#plan-json").value = JSON.stringify(plan, null, 2);
  } catch (error) {
    report("#submit-error", new Error(`could not load the sample plan: ${error.message}`));
  }
}

async function submitPlan(event) {
  event.preventDefault();
  showError("#submit-error", "");
  let plan;
  try {
    plan = JSON.parse($("#plan-json").value);
  } catch (error) {
    showError("#submit-error", `the plan is not valid JSON: ${error.message}`);
    return;
  }
  try {
    const answer = await api("POST", "/workflows", { body: { title: $("#plan-title").value, plan } });
    await refreshList();
    render(answer.workflow);
  } catch (error) {
    report("#submit-error", error);
  }
}

// --- list -----------------------------------------------------------------------------------

async function refreshList() {
  try {
    const answer = await api("GET", "/workflows?page_size=50");
    showError("#list-error", "");
    renderList(answer.workflows || []);
  } catch (error) {
    report("#list-error", error);
  }
}

function progressText(progress) {
  const p = progress || {};
  return `${p.done || 0}/${p.total || 0}`;
}

function actionButton(text, className, onClick) {
  const button = element("button", text, className);
  button.type = "button";
  button.addEventListener("click", (e) => { e.stopPropagation(); onClick(); });
  return button;
}

function renderList(workflows) {
  const body = $("#workflow-table tbody");
  body.replaceChildren();
  for (const workflow of workflows) {
    const row = element("tr");
    row.dataset.workflowId = workflow.workflow_id;
    if (workflow.workflow_id === state.selected) row.classList.add("selected");
    row.append(element("td", workflow.workflow_id), element("td", workflow.title), element("td", workflow.created_by));
    const status = shortStatus(workflow.status);
    const cell = element("td");
    cell.append(element("span", status, `badge ${status}`));
    row.append(cell, element("td", progressText(workflow.progress)));
    const actions = element("td");
    if (status === "AWAITING_APPROVAL" && may.decide()) {
      actions.append(
        actionButton("Approve", "small approve", () => approveWorkflow(workflow.workflow_id)),
        " ",
        actionButton("Reject", "small reject", () => rejectWorkflow(workflow.workflow_id)),
      );
    }
    row.append(actions);
    row.addEventListener("click", () => select(workflow.workflow_id));
    body.append(row);
  }
}

function markListRow(workflowId, status, progress) {
  const row = document.querySelector(`#workflow-table tr[data-workflow-id="${CSS.escape(workflowId)}"]`);
  if (!row) return;
  const short = shortStatus(status);
  const badge = row.cells[3].firstChild;
  if (badge) { badge.textContent = short; badge.className = `badge ${short}`; }
  if (progress) row.cells[4].textContent = progressText(progress);
  if (short !== "AWAITING_APPROVAL") row.cells[5].replaceChildren();
}

// --- detail ---------------------------------------------------------------------------------

async function select(workflowId) {
  try {
    const answer = await api("GET", workflowPath(workflowId));
    render(answer.workflow);
  } catch (error) {
    report("#list-error", error);
  }
}

function clearDetail() {
  closeStream();
  state.selected = null;
  state.workflow = null;
  state.seen = new Set();
  state.findings = null;
  $("#findings tbody").replaceChildren();
  $("#detail").hidden = true;
  $("#event-log").replaceChildren();
  showError("#action-error", "");
}

function setView(view) {
  $("#detail").dataset.view = view;
  $("#awaiting-view").hidden = view !== "awaiting";
  $("#processing-view").hidden = view !== "processing";
  $("#done-view").hidden = view !== "done";
}

function setStatus(status) {
  const short = shortStatus(status);
  const badge = $("#detail-status");
  badge.textContent = short;
  badge.className = `badge ${short}`;
}

function setProgress(progress) {
  const p = progress || {};
  const bar = $("#progress");
  bar.max = Math.max(p.total || 0, 1);
  bar.value = p.done || 0;
  const percent = p.total ? Math.round((100 * (p.done || 0)) / p.total) : 0;
  $("#progress-text").textContent = `${p.done || 0} of ${p.total || 0} steps (${percent} %)`;
}

// Who submitted the workflow and who decided on it, as the API records them.
function setPeople(workflow) {
  let text = `Submitted by ${workflow.created_by || "(unknown)"}.`;
  const required = Math.max(Number(workflow.required_approvals || 1), 1);
  const approvers = (workflow.approvals || []).map((a) => a.approver);
  const rejected = shortStatus(workflow.status) === "REJECTED";
  if (required > 1) {
    text += ` Approved by ${approvers.length} of ${required}` + (approvers.length ? `: ${approvers.join(", ")}.` : ".");
    const missing = required - approvers.length;
    if (missing > 0 && shortStatus(workflow.status) === "AWAITING_APPROVAL") text += ` ${missing} more needed.`;
    if (rejected && workflow.decided_by) text += ` Rejected by ${workflow.decided_by}.`;
  } else if (workflow.decided_by) {
    text += ` ${rejected ? "Rejected" : "Approved"} by ${workflow.decided_by}.`;
  }
  $("#detail-people").textContent = text;
}

// Remember the workflow as last read: the cancel control depends on who submitted it.
function setWorkflow(workflow) {
  state.workflow = workflow;
  setPeople(workflow);
  applyRoles();
}

function render(workflow) {
  const changed = state.selected !== workflow.workflow_id;
  if (changed) {
    clearDetail();
    state.selected = workflow.workflow_id;
  }
  for (const row of document.querySelectorAll("#workflow-table tbody tr")) {
    row.classList.toggle("selected", row.dataset.workflowId === workflow.workflow_id);
  }
  $("#detail").hidden = false;
  $("#detail-id").textContent = workflow.workflow_id;
  $("#detail-title").textContent = workflow.title || "";
  setWorkflow(workflow);
  setStatus(workflow.status);
  setProgress(workflow.progress);
  const status = shortStatus(workflow.status);
  if (TERMINAL.has(status)) {
    showDone(workflow);
  } else if (workflow.is_processing || PROCESSING.has(status)) {
    setView("processing");
    $("#processing-message").textContent = workflow.last_message || "Processing in the background…";
  } else {
    setView("awaiting");
  }
  if (changed || !TERMINAL.has(status)) openStream(workflow.workflow_id);
}

function showDone(workflow) {
  closeStream();
  setView("done");
  const status = shortStatus(workflow.status);
  let message = `Workflow ${status.toLowerCase()}.`;
  if (workflow.error && workflow.error.message) message += ` ${workflow.error.reason}: ${workflow.error.message}`;
  if (workflow.decision_comment) message += ` Comment: ${workflow.decision_comment}`;
  $("#done-message").textContent = message;
  renderFindings(workflow);
}

// Each audit step's summary from the result; the findings themselves are a resource of their
// own, read a page at a time (high first, then by amount) and exported as files.
function renderFindings(workflow) {
  const list = $("#step-summaries");
  list.replaceChildren();
  const steps = (workflow.result && Array.isArray(workflow.result.steps)) ? workflow.result.steps : [];
  let audited = false;
  for (const step of steps) {
    const summary = step.result && step.result.summary;
    if (!summary || summary.findings === undefined) continue;
    audited = true;
    list.append(element("li", `${step.procedure}: ${summaryText(summary)}`));
  }
  $("#stake-note").hidden = !audited;
  $("#findings tbody").replaceChildren();
  state.findings = { workflowId: workflow.workflow_id, token: "", shown: 0 };
  loadFindings();
}

function summaryText(summary) {
  const count = Number(summary.findings || 0);
  if (!count) return "no findings";
  const by = summary.by_severity || {};
  const split = ["high", "medium", "low"].filter((s) => by[s]).map((s) => `${by[s]} ${s}`).join(", ");
  return `${count} finding${count === 1 ? "" : "s"}${split ? ` (${split})` : ""}, ${summary.amount_at_stake} at stake`;
}

async function loadFindings() {
  const wanted = state.findings;
  showError("#findings-error", "");
  const query = new URLSearchParams({ page_size: "50" });
  if (wanted.token) query.set("page_token", wanted.token);
  let page;
  try {
    page = await api("GET", workflowPath(wanted.workflowId, `/findings?${query}`));
  } catch (error) {
    report("#findings-error", error);
    return;
  }
  if (state.findings !== wanted) return;  // another workflow was opened meanwhile
  const body = $("#findings tbody");
  for (const finding of page.findings || []) {
    const row = element("tr");
    const ids = (finding.entry_ids || []).join(", ");
    const more = Number(finding.entry_count || 0) - (finding.entry_ids || []).length;
    row.append(
      element("td", finding.finding_id),
      element("td", finding.severity, `sev-${finding.severity}`),
      element("td", finding.step),
      element("td", finding.procedure),
      element("td", more > 0 ? `${ids} (+${more})` : ids),
      element("td", finding.amount),
      element("td", finding.explanation),
    );
    body.append(row);
  }
  wanted.shown += (page.findings || []).length;
  wanted.token = page.next_page_token || "";
  const total = Number(page.total || 0);
  $("#findings").hidden = total === 0;
  $("#findings").dataset.count = String(wanted.shown);
  $("#findings-count").hidden = total === 0;
  $("#findings-count").textContent = `${wanted.shown} of ${total} findings, high first, then by amount.`;
  $("#findings-more").hidden = total === 0;
  $("#more-findings").hidden = !wanted.token;
  $("#no-findings").hidden = total !== 0;
}

// A download needs the Authorization header, which a link cannot send: fetch, then save.
async function exportFindings(format) {
  const workflowId = state.findings && state.findings.workflowId;
  if (!workflowId) return;
  showError("#findings-error", "");
  let response;
  try {
    response = await fetch(workflowPath(workflowId, `/findings/export?format=${format}`), { headers: withAuth({}) });
  } catch (_) {
    showError("#findings-error", "the server did not answer; try again");
    return;
  }
  if (!response.ok) {
    showError("#findings-error", errorText(response.status, await readJson(response)));
    return;
  }
  const link = element("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = `${workflowId}-findings.${format}`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

// --- decisions ------------------------------------------------------------------------------

// The etag of the plan this page shows: the decision is refused (409) if the plan is another.
function shownEtag(workflowId) {
  return state.workflow && state.workflow.workflow_id === workflowId ? state.workflow.etag || "" : "";
}

async function approveWorkflow(workflowId) {
  showError("#action-error", "");
  try {
    const answer = await api("POST", workflowPath(workflowId, "/approve"), {
      body: { comment: $("#decision-comment").value, etag: shownEtag(workflowId) },
    });
    if (shortStatus(answer.workflow_status) === "AWAITING_APPROVAL") {
      render(answer.workflow);  // one of several approvers: the plan still waits for the others
      return;
    }
    // The Approve answer itself switches to the processing view: the work runs in the
    // background, and the user should not wait for the first stream event to see that.
    if (state.selected !== workflowId) render(answer.workflow);
    setStatus(answer.workflow_status);
    setView("processing");
    $("#processing-message").textContent = answer.processing_message || "Processing in the background…";
    if (answer.workflow) {
      setWorkflow(answer.workflow);
      setProgress(answer.workflow.progress);
    }
    markListRow(workflowId, answer.workflow_status, answer.workflow && answer.workflow.progress);
    openStream(workflowId);
  } catch (error) {
    if (error.quiet) return;
    if (state.selected !== workflowId) await select(workflowId);
    report("#action-error", error);
  }
}

async function rejectWorkflow(workflowId) {
  showError("#action-error", "");
  try {
    const answer = await api("POST", workflowPath(workflowId, "/reject"), {
      body: { comment: $("#decision-comment").value, etag: shownEtag(workflowId) },
    });
    render(answer.workflow);
    markListRow(workflowId, answer.workflow.status, answer.workflow.progress);
  } catch (error) {
    if (error.quiet) return;
    if (state.selected !== workflowId) await select(workflowId);
    report("#action-error", error);
  }
}

async function cancelWorkflow() {
  const workflowId = state.selected;
  if (!workflowId) return;
  showError("#action-error", "");
  try {
    const answer = await api("POST", workflowPath(workflowId, "/cancel"), {
      body: { reason: "cancelled from the status page" },
    });
    // Awaiting approval it ends at once; a running workflow stops between cycles (the stream says when).
    if (state.selected === workflowId) render(answer.workflow);
    markListRow(workflowId, answer.workflow.status, answer.workflow.progress);
  } catch (error) {
    report("#action-error", error);
  }
}

// --- live status: Server-Sent Events over fetch() -------------------------------------------
//
// EventSource cannot send an Authorization header, so the page reads the event stream itself.
// It keeps the last event id and, after a dropped connection, reconnects with Last-Event-ID (the
// server resumes after it), waiting longer each time; it stops for good after `event: end` (once
// the workflow has ended), `event: error`, a 4xx answer, or when another workflow is selected
// (the AbortController).

function closeStream() {
  if (state.stream) {
    state.stream.controller.abort();
    state.stream = null;
  }
}

function openStream(workflowId) {
  if (state.stream && state.stream.workflowId === workflowId) return;
  closeStream();
  const stream = {
    workflowId,
    controller: new AbortController(),
    lastEventId: "",
    retry: RETRY_MIN_MS,  // the shortest wait before a reconnect
    delay: RETRY_MIN_MS,  // the next wait: grows while connections fail, back to `retry` on an event
    finished: null,       // "end" or "error" when the server closed this connection on purpose
  };
  state.stream = stream;
  watch(stream);
}

const isCurrent = (stream) => state.stream === stream;

function pause(ms, signal) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done);
  });
}

async function watch(stream) {
  while (isCurrent(stream)) {
    let outcome;
    try {
      outcome = await readStream(stream);
    } catch (_) {
      outcome = "dropped";  // a network error, or our own abort (then the loop ends below)
    }
    if (outcome === "end" && !(await showIfEnded(stream.workflowId))) {
      outcome = "dropped";  // the server ended the stream early (a restart): resume as after a drop
    }
    if (outcome !== "dropped" || !isCurrent(stream)) break;
    await pause(stream.delay, stream.controller.signal);
    stream.delay = Math.min(stream.delay * 2, Math.max(RETRY_MAX_MS, stream.retry));
  }
  // Ended for good: selecting the workflow again may open a new stream.
  if (isCurrent(stream)) state.stream = null;
}

// One connection: "end" or "error" (the server finished the stream), "refused" (an error
// answer not worth repeating) or "dropped" (try again).
async function readStream(stream) {
  stream.finished = null;
  const session = state.session;
  const headers = withAuth({ Accept: "text/event-stream" });
  if (stream.lastEventId) headers["Last-Event-ID"] = stream.lastEventId;
  const response = await fetch(workflowPath(stream.workflowId, "/status/stream"), {
    headers,
    cache: "no-store",
    signal: stream.controller.signal,
  });
  if (!response.ok) return refusedStream(stream, response, session);
  const feed = sseParser({
    onEvent: (event) => onStreamEvent(stream, session, event),
    onRetry: (ms) => { stream.retry = ms; stream.delay = Math.max(stream.delay, ms); },
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  while (isCurrent(stream) && !stream.finished) {
    const { value, done } = await reader.read();
    if (done) break;
    feed(value);
  }
  reader.cancel().catch(() => {});  // (already closed, or aborted: nothing to do)
  return stream.finished || "dropped";
}

async function refusedStream(stream, response, session) {
  const body = await readJson(response);
  if (response.status >= 500) return "dropped";  // a restart or an overload: worth another try
  if (response.status === 401) onUnauthenticated(session, body);
  else if (isCurrent(stream)) showError("#action-error", errorText(response.status, body));
  return "refused";
}

function onStreamEvent(stream, session, { type, data, id }) {
  if (!isCurrent(stream)) return;
  if (id) stream.lastEventId = id;
  if (type === "message") {
    stream.delay = stream.retry;  // the connection works: the next drop waits the least again
    let update;
    try {
      update = JSON.parse(data);
    } catch (_) {
      return;
    }
    onUpdate(stream.workflowId, update);
  } else if (type === "end") {
    stream.finished = "end";  // watch() looks at the workflow once more
  } else if (type === "error") {  // a refusal in the middle of the stream, as a JSON error body
    stream.finished = "error";
    let body;
    try {
      body = JSON.parse(data);
    } catch (_) {
      body = { message: data };
    }
    if (body.status === "UNAUTHENTICATED") onUnauthenticated(session, body);
    else showError("#action-error", errorText("error", body));
  }
}

// The event stream format: `field: value` lines, a blank line ends an event, `:` starts a
// comment (the server's heartbeat). Feed it text as it arrives; it calls onEvent({type, data,
// id}) for each event with data and onRetry(ms) for a `retry:` field.
function sseParser({ onEvent, onRetry }) {
  let buffer = "";
  let type = "";
  let data = [];
  let lastId = "";  // kept across events, as the last event id is

  function line(text) {
    if (text === "") {
      if (data.length) onEvent({ type: type || "message", data: data.join("\n"), id: lastId });
      type = "";
      data = [];
      return;
    }
    if (text.startsWith(":")) return;
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
    else if (field === "id" && !value.includes("\0")) lastId = value;
    else if (field === "retry" && /^\d+$/.test(value)) onRetry(Number(value));
  }

  return function feed(chunk) {
    buffer += chunk;
    // Lines end with CRLF, LF or CR; a CR at the very end may be half of a CRLF, so it waits.
    const end = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length;
    const lines = buffer.slice(0, end).split(/\r\n|\r|\n/);
    buffer = lines.pop() + buffer.slice(end);  // the unfinished last line
    for (const text of lines) line(text);
  };
}

function onUpdate(workflowId, data) {
  const event = data.event;
  if (event && !state.seen.has(event.sequence)) {
    state.seen.add(event.sequence);
    const time = event.time ? new Date(event.time).toLocaleTimeString() : "";
    const text = `#${event.sequence} ${time} ${shortEvent(event.type)}${event.message ? ": " + event.message : ""}`;
    const item = element("li", text);
    item.dataset.type = shortEvent(event.type);
    $("#event-log").append(item);
    item.scrollIntoView({ block: "nearest" });
  }
  const snapshot = data.snapshot;
  if (!snapshot) return;
  const status = shortStatus(snapshot.status);
  setStatus(snapshot.status);
  setProgress(snapshot.progress);
  markListRow(workflowId, snapshot.status, snapshot.progress);
  if (TERMINAL.has(status)) {
    closeStream();  // the server ends the stream next anyway
    showIfEnded(workflowId);
  } else if (snapshot.is_processing || PROCESSING.has(status)) {
    setView("processing");
    if (snapshot.last_message) $("#processing-message").textContent = snapshot.last_message;
  }
}

// Read the workflow once more, for its result and who decided; if it has ended, show that.
// True when there is nothing more to watch.
async function showIfEnded(workflowId) {
  if (state.selected !== workflowId) return true;
  try {
    const answer = await api("GET", workflowPath(workflowId));
    if (state.selected !== workflowId) return true;
    if (!TERMINAL.has(shortStatus(answer.workflow.status))) return false;
    render(answer.workflow);
    markListRow(workflowId, answer.workflow.status, answer.workflow.progress);
    return true;
  } catch (error) {
    report("#action-error", error);
    return true;
  }
}

// --- start ----------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#signin-form").addEventListener("submit", signIn);
  $("#sign-out").addEventListener("click", signOut);
  $("#plan-form").addEventListener("submit", submitPlan);
  $("#refresh").addEventListener("click", refreshList);
  $("#approve").addEventListener("click", () => state.selected && approveWorkflow(state.selected));
  $("#reject").addEventListener("click", () => state.selected && rejectWorkflow(state.selected));
  $("#cancel").addEventListener("click", cancelWorkflow);
  $("#cancel-awaiting").addEventListener("click", cancelWorkflow);
  $("#more-findings").addEventListener("click", loadFindings);
  for (const button of document.querySelectorAll("button.export")) {
    button.addEventListener("click", () => exportFindings(button.dataset.format));
  }
  start();
});

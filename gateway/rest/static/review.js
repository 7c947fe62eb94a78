// One workflow's page (/ui/workflows/{id}): before anyone decides, the whole plan (each step's
// procedure and parameters, each data source with its fingerprint), its revision and etag, the
// changes since the revision the caller last saw, the approvals so far and the trail.
//
// Approve exists only here. It is enabled once the plan is on screen and sends the etag of the
// revision shown: if the submitter revised the plan meanwhile, the server refuses it (409
// ETAG_MISMATCH) and the page shows the new revision and its changes, for the approver to read
// and decide again. Comments and reasons belong to the workflow on screen and are cleared when
// the page shows another.
"use strict";

const SHOW_FIRST = 50;       // steps or changes drawn at once: the rest waits for "show all"
const LONG_VALUE = 240;      // characters of a value shown before its own "show all"
const SEEN_KEY = "auditflow.seen-revisions";  // localStorage: {principal: {workflow id: see lastSeen()}}
const SEEN_MAX = 500;        // workflows remembered per person, the most recent kept

const workflowPage = (workflowId) => `/ui/workflows/${encodeURIComponent(workflowId)}`;
const shortEtag = (etag) => String(etag || "").slice(0, 12);

async function showWorkflowPage(workflowId) {
  closeQueue();
  $("#not-found").hidden = true;
  if (state.selected !== workflowId) {
    clearDetail();
    state.selected = workflowId;
  }
  document.title = `${workflowId} · auditflow`;
  try {
    const answer = await api("GET", workflowPath(workflowId));
    if (state.selected === workflowId) render(answer.workflow);
  } catch (error) {
    if (error.quiet || state.selected !== workflowId) return;
    // Unknown or not the caller's to see: the same answer, which says neither.
    if ([400, 403, 404].includes(error.status)) showNotFound(workflowId);
    else showDetailError(workflowId, error);
  }
}

function showNotFound(workflowId) {
  clearDetail();
  $("#not-found-id").textContent = workflowId;
  $("#not-found").hidden = false;
  document.title = "Workflow not found · auditflow";
  focusView("#not-found-heading");
}

function showDetailError(workflowId, error) {
  $("#detail").hidden = false;
  $("#detail-id").textContent = workflowId;
  report("#action-error", error);
}

function clearDetail() {
  closeStream();
  state.selected = null;
  state.workflow = null;
  state.seen = new Set();
  state.findings = null;
  state.run = null;
  $("#detail").hidden = true;
  for (const selector of ["#findings tbody", "#event-log", "#plan-steps", "#diff-table tbody", "#approvals-list",
    "#step-status tbody"]) {
    $(selector).replaceChildren();
  }
  for (const selector of ["#diff", "#plan-all", "#diff-all", "#steps-view", "#changes-requested"]) $(selector).hidden = true;
  $("#plan-loading").hidden = false;
  $("#decision-comment").value = "";  // a comment belongs to its workflow
  $("#decision-reason").value = "";
  $("#trail-status").textContent = "";
  showError("#action-error", "");
  showActionNote("");
}

function showActionNote(message) {
  $("#action-note").textContent = message;
  $("#action-note").hidden = !message;
}

function setStatus(status) {
  const short = shortStatus(status);
  const badge = $("#detail-status");
  badge.textContent = short;
  badge.className = `badge ${short}`;
}

// Show `workflow` as read from the server; a new revision redraws the plan and its changes.
function render(workflow) {
  if (state.selected !== workflow.workflow_id) {
    clearDetail();
    state.selected = workflow.workflow_id;
  }
  const previous = state.workflow;
  state.workflow = workflow;
  $("#not-found").hidden = true;
  $("#detail").hidden = false;
  $("#detail-id").textContent = workflow.workflow_id;
  $("#detail-title").textContent = workflow.title || "";
  $("#detail-revision").textContent =
    `Revision ${workflow.revision || 1} · etag ${shortEtag(workflow.etag)}` +
    (workflow.orchestrator ? ` · orchestrator ${workflow.orchestrator}` : "");
  $("#detail-revision").title = workflow.etag || "";
  setStatus(workflow.status);
  setPeople(workflow);
  showChangesRequested(workflow.changes_requested, workflow.status);
  if (!previous || previous.etag !== workflow.etag) {
    renderPlan(workflow);
    showChangesSinceSeen(workflow);
  }
  renderApprovals(workflow);
  renderRun(workflow);
  applyRoles();
  loadTrail(workflow.workflow_id);
  focusView("#detail-heading");
}

// Who submitted the workflow and who decided on it, as the API records them.
function setPeople(workflow) {
  let text = `Submitted by ${workflow.created_by || "(unknown)"}`;
  if (workflow.created_at) text += ` on ${when(workflow.created_at)}`;
  text += ".";
  const status = shortStatus(workflow.status);
  if (workflow.decided_by && status === "REJECTED") text += ` Rejected by ${workflow.decided_by}.`;
  else if (workflow.decided_by && status !== "AWAITING_APPROVAL") text += ` Approved by ${workflow.decided_by}.`;
  $("#detail-people").textContent = text;
}

const when = (time) => (time ? new Date(time).toLocaleString() : "");

function showChangesRequested(request, status) {
  const shown = Boolean(request && request.requested_by) && shortStatus(status) === "CHANGES_REQUESTED";
  $("#changes-requested").hidden = !shown;
  if (shown) {
    $("#changes-requested").textContent =
      `${request.requested_by} asked for changes to revision ${request.revision} on ${when(request.time)}: ` +
      `“${request.reason}”. The plan waits for its submitter to revise it.`;
  }
}

// --- the plan -------------------------------------------------------------------------------

function renderPlan(workflow) {
  const steps = workflow.plan || [];
  const list = $("#plan-steps");
  list.replaceChildren();
  $("#plan-loading").hidden = true;
  drawSome(list, steps, (step, index) => stepItem(step, index), $("#plan-all"), "steps");
}

// Draw the first SHOW_FIRST items; a button draws the rest when asked, so a huge plan or diff
// never holds the page up.
function drawSome(container, items, draw, button, noun) {
  const first = items.slice(0, SHOW_FIRST);
  container.append(...first.map((item, index) => draw(item, index)));
  button.hidden = items.length <= SHOW_FIRST;
  button.textContent = `Show all ${items.length} ${noun}`;
  button.onclick = () => {
    button.hidden = true;
    container.append(...items.slice(SHOW_FIRST).map((item, index) => draw(item, SHOW_FIRST + index)));
  };
}

function stepItem(step, index) {
  const item = element("li");
  item.dataset.step = String(index + 1);
  item.append(element("strong", step.procedure, "procedure"));
  const parameters = Object.entries(step.parameters || {});
  const list = element("dl", null, "parameters");
  for (const [name, value] of parameters) {
    const description = element("dd");
    description.append(longText(JSON.stringify(value)));
    list.append(element("dt", name), description);
  }
  if (!parameters.length) list.append(element("dt", "(no parameters)"));
  item.append(list);
  const sources = step.sources || [];
  if (sources.length) {
    const data = element("ul", null, "sources");
    data.setAttribute("aria-label", `Data read by step ${index + 1}`);
    for (const source of sources) data.append(sourceItem(source));
    item.append(data);
  }
  return item;
}

// A data source and the fingerprint the approval binds: the file must still have these bytes
// when the step reads it, or the run fails.
function sourceItem(source) {
  const item = element("li", null, source.changed ? "source changed" : "source");
  item.append(element("span", `${source.parameter}: `), element("code", source.path, "path"));
  const sha = element("code", String(source.sha256 || "").slice(0, 16), "sha");
  sha.title = source.sha256 || "";
  item.append(` · SHA-256 `, sha, ` · ${sizeText(source.size_bytes)} · modified ${when(source.modified_at)}`);
  if (source.changed) {
    item.append(element("p", `Warning: this file no longer matches the plan: ${source.changed}`, "warning"));
  }
  return item;
}

function sizeText(bytes) {
  let size = Number(bytes || 0);
  for (const unit of ["bytes", "kB", "MB", "GB"]) {
    if (size < 1000 || unit === "GB") return unit === "bytes" ? `${size} bytes` : `${size.toFixed(1)} ${unit}`;
    size /= 1000;
  }
  return "";
}

// Text cut at LONG_VALUE characters, with a button for the rest.
function longText(text) {
  const code = element("code", text.length > LONG_VALUE ? `${text.slice(0, LONG_VALUE)}…` : text);
  if (text.length <= LONG_VALUE) return code;
  const span = element("span");
  const button = element("button", `show all ${text.length} characters`, "small");
  button.type = "button";
  button.addEventListener("click", () => { code.textContent = text; button.remove(); });
  span.append(code, " ", button);
  return span;
}

// --- changes since the revision last seen ---------------------------------------------------

function seenRevisions() {
  try {
    const all = JSON.parse(localStorage.getItem(SEEN_KEY) || "{}");
    return all && typeof all === "object" ? all : {};
  } catch (_) {
    return {};
  }
}

// The revision the caller last saw of a workflow, and the changes shown with it (so that a
// reload shows them again): {revision, from, seen: whether `from` was seen too}.
function lastSeen(workflowId) {
  const mine = seenRevisions()[state.me.principal] || {};
  const [revision, from, seen] = Array.isArray(mine[workflowId]) ? mine[workflowId] : [0, 0, false];
  return { revision: Number(revision) || 0, from: Number(from) || 0, seen: Boolean(seen) };
}

function rememberSeen(workflowId, { revision, from, seen }) {
  const all = seenRevisions();
  const mine = all[state.me.principal] || {};
  delete mine[workflowId];
  mine[workflowId] = [revision, from, seen];  // last in insertion order: the most recent
  const names = Object.keys(mine);
  for (const name of names.slice(0, Math.max(0, names.length - SEEN_MAX))) delete mine[name];
  all[state.me.principal] = mine;
  try {
    localStorage.setItem(SEEN_KEY, JSON.stringify(all));
  } catch (_) { /* storage off or full: the changes are then shown from the first revision */ }
}

// The changes from the revision the caller last saw (or the first, on a first visit) to the
// one now on screen; a reload shows the same changes again.
function showChangesSinceSeen(workflow) {
  const current = Number(workflow.revision || 1);
  const last = lastSeen(workflow.workflow_id);
  let shown = { revision: current, from: 1, seen: false };
  if (last.revision === current) shown = last;
  else if (last.revision > 0 && last.revision < current) shown = { revision: current, from: last.revision, seen: true };
  rememberSeen(workflow.workflow_id, shown);
  if (shown.from > 0 && shown.from < current) loadDiff(workflow.workflow_id, shown.from, current, shown.seen);
}

async function loadDiff(workflowId, from, to, seenBefore) {
  let answer;
  try {
    answer = await api("GET", workflowPath(workflowId, `/revisions/${to}?compare_to=${from}`));
  } catch (error) {
    report("#action-error", new Error(`could not read the changes: ${error.message}`));
    return;
  }
  if (state.selected !== workflowId || Number(state.workflow.revision || 1) !== to) return;
  const since = seenBefore ? `revision ${from}, the one you last saw` : `revision ${from}, as first submitted`;
  $("#diff-heading").textContent = `Changes in revision ${to} since ${since}`;
  const reason = answer.revision && answer.revision.reason;
  if (reason) $("#diff-heading").textContent += ` (reason: ${reason})`;
  const body = $("#diff-table tbody");
  body.replaceChildren();
  const changes = answer.changes || [];
  drawSome(body, changes, changeRow, $("#diff-all"), "changes");
  $("#diff-none").hidden = changes.length > 0;
  $("#diff").hidden = false;
}

function changeRow(change) {
  const row = element("tr", null, `change ${String(change.kind || "").toLowerCase()}`);
  const before = element("td");
  before.append(longText(change.before || ""));
  const after = element("td");
  after.append(longText(change.after || ""));
  row.append(element("td", change.field), element("td", change.kind), before, after);
  return row;
}

// --- approvals, trail -----------------------------------------------------------------------

function approvalCount(workflow) {
  return { given: (workflow.approvals || []).length, required: Math.max(Number(workflow.required_approvals || 1), 1) };
}

function renderApprovals(workflow) {
  const { given, required } = approvalCount(workflow);
  let text = `${given} of ${required} approval${required === 1 ? "" : "s"}`;
  if (shortStatus(workflow.status) === "AWAITING_APPROVAL" && given < required) text += `: ${required - given} more needed.`;
  else text += ".";
  $("#approvals-summary").textContent = text;
  const list = $("#approvals-list");
  list.replaceChildren();
  for (const approval of workflow.approvals || []) {
    let line = `${approval.approver}, ${when(approval.time)}, revision ${approval.revision || 1}`;
    if (approval.comment) line += `: “${approval.comment}”`;
    list.append(element("li", line));
  }
}

async function loadTrail(workflowId) {
  try {
    const trail = await api("GET", workflowPath(workflowId, "/trail"));
    if (state.selected !== workflowId) return;
    $("#trail-status").textContent = trailText(trail);
    $("#trail-status").className = trail.intact ? "" : "error";
  } catch (error) {
    if (!error.quiet && state.selected === workflowId) $("#trail-status").textContent = `Not verified: ${error.message}`;
  }
}

function trailText(trail) {
  if (!trail.intact) {
    return `The trail is broken at event ${trail.first_bad_sequence}: ${trail.problem}`;
  }
  let text = `Verified: ${trail.events_checked} events, hash chain intact`;
  if (trail.signed) text += trail.signature_checked ? `, signature checked (key ${trail.signing_key_id})` : ", signed";
  return `${text}.`;
}

// --- decisions ------------------------------------------------------------------------------

const awaiting = (workflow) => Boolean(workflow) && shortStatus(workflow.status) === "AWAITING_APPROVAL";

// Hide or disable what the caller may not do here. Only a courtesy: the server decides.
function applyDecisionRoles() {
  const workflow = state.workflow;
  const canDecide = awaiting(workflow) && may.decideOn(workflow);
  $("#decision-controls").hidden = !canDecide;
  $("#decision-note").hidden = canDecide || !awaiting(workflow);
  $("#decision-note").textContent = decisionNote(workflow);
  $("#approve").disabled = !canDecide || $("#plan-steps").children.length === 0;
  $("#approve").textContent = canDecide ? `Approve revision ${workflow.revision || 1}` : "Approve";
  const reason = $("#decision-reason").value.trim() !== "";
  $("#reject").disabled = !canDecide || !reason;
  $("#request-changes").disabled = !canDecide || !reason;
  const canCancel = may.cancel(workflow);
  const open = Boolean(workflow) && ["AWAITING_APPROVAL", "CHANGES_REQUESTED"].includes(shortStatus(workflow.status));
  $("#cancel").hidden = !canCancel;
  $("#cancel-awaiting").hidden = !(canCancel && open);
  const changed = Boolean(workflow) && (workflow.plan || []).some((step) => (step.sources || []).some((s) => s.changed));
  $("#refresh-view").hidden = !(open && changed && isMe(workflow.created_by));
}

function decisionNote(workflow) {
  if (!workflow) return "";
  if (!may.decide()) return `Approving or rejecting needs the approver role; you have ${rolesText()}.`;
  if (isMe(workflow.created_by)) return "You submitted this plan: another approver decides on it.";
  const { given, required } = approvalCount(workflow);
  return `You approved this revision; ${required - given} more approval${required - given === 1 ? "" : "s"} needed.`;
}

// Ask before a decision; true when confirmed. The dialog is modal: focus stays in it, Escape
// goes back.
function confirmAction(title, text, action) {
  const dialog = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = action;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
    $("#confirm-cancel").focus();
  });
}

// What the plan on screen is: the decision names it, and the server refuses it if it is stale.
function shownPlan() {
  const workflow = state.workflow;
  return { workflowId: workflow.workflow_id, title: workflow.title, revision: workflow.revision || 1, etag: workflow.etag };
}

async function approveShown() {
  if (!state.workflow || $("#approve").disabled) return;
  const shown = shownPlan();
  const { given, required } = approvalCount(state.workflow);
  const mine = given + 1;
  const outcome = mine >= required ? "the plan runs" : `${required - mine} more needed before it runs`;
  const confirmed = await confirmAction(
    `Approve “${shown.title}”?`,
    `Workflow ${shown.workflowId}, revision ${shown.revision}. This is approval ${mine} of ${required}: ${outcome}.`,
    `Approve revision ${shown.revision}`,
  );
  if (!confirmed || state.selected !== shown.workflowId) return;
  await decide(shown, "/approve", { etag: shown.etag, comment: $("#decision-comment").value.trim() });
}

async function rejectShown() {
  await decideWithReason("Reject", "/reject", "The workflow ends and never runs.", (reason) => ({ comment: reason }));
}

async function requestChangesShown() {
  await decideWithReason("Request changes to", "/request-changes",
    "The workflow waits for its submitter to revise the plan.", (reason) => ({ reason }));
}

async function decideWithReason(verb, path, outcome, body) {
  const reason = $("#decision-reason").value.trim();
  if (!state.workflow || !reason) return;
  const shown = shownPlan();
  const confirmed = await confirmAction(`${verb} “${shown.title}”?`,
    `Workflow ${shown.workflowId}, revision ${shown.revision}. ${outcome} Reason: “${reason}”.`,
    verb.replace(/ to$/, ""));
  if (!confirmed || state.selected !== shown.workflowId) return;
  await decide(shown, path, { etag: shown.etag, ...body(reason) });
}

async function decide(shown, path, body) {
  showError("#action-error", "");
  showActionNote("");
  for (const id of ["#approve", "#reject", "#request-changes"]) $(id).disabled = true;
  try {
    const answer = await api("POST", workflowPath(shown.workflowId, path), { body });
    if (state.selected !== shown.workflowId) return;
    $("#decision-comment").value = "";
    $("#decision-reason").value = "";
    render(answer.workflow);
    if (answer.processing_message) $("#processing-message").textContent = answer.processing_message;
  } catch (error) {
    if (error.quiet || state.selected !== shown.workflowId) return;
    if (error.reason === "ETAG_MISMATCH") await showRevised(shown);
    else report("#action-error", error);
    applyRoles();
  }
}

// The plan changed after it was put on screen: nothing was recorded. Show the new revision and
// what changed; the approver reads it and decides again (never on their behalf).
async function showRevised(shown) {
  try {
    const answer = await api("GET", workflowPath(shown.workflowId));
    if (state.selected !== shown.workflowId) return;
    render(answer.workflow);
    const now = answer.workflow.revision || 1;
    showActionNote(
      `Not recorded: the plan was revised since you opened it (revision ${shown.revision} → ${now}). ` +
      "Read the changes and the plan below, then decide again.");
  } catch (error) {
    report("#action-error", error);
  }
}

// The submitter binds the plan to its data files as they are now: a new revision (an empty
// revision but for the etag), which dismisses the approvals given so far.
async function refreshData() {
  if (!state.workflow) return;
  const shown = shownPlan();
  const { given } = approvalCount(state.workflow);
  const confirmed = await confirmAction(`Refresh the data fingerprints of “${shown.title}”?`,
    `Workflow ${shown.workflowId} gets revision ${shown.revision + 1}, bound to the files as they are now. ` +
    `The approvals given so far (${given}) are dismissed.`, "Refresh");
  if (!confirmed || state.selected !== shown.workflowId) return;
  await decide(shown, "/revise", { etag: shown.etag, reason: "data files refreshed" });
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
  } catch (error) {
    report("#action-error", error);
  }
}

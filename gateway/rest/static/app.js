// The auditflow status page: plain JavaScript over the REST API, no build step.
"use strict";

const TERMINAL = new Set(["COMPLETED", "FAILED", "REJECTED", "CANCELLED"]);
const PROCESSING = new Set(["APPROVED", "QUEUED", "RUNNING"]);
const $ = (selector) => document.querySelector(selector);
const state = { selected: null, source: null, seen: new Set() };

const shortStatus = (status) => String(status || "").replace(/^WORKFLOW_STATUS_/, "");
const shortEvent = (type) => String(type || "").replace(/^EVENT_TYPE_/, "");

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

async function api(method, path, { user, body } = {}) {
  const headers = { Accept: "application/json" };
  if (user) headers["X-Auditflow-User"] = user;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = {};
  try {
    data = await response.json();
  } catch (_) {
    data = { message: `HTTP ${response.status}` };
  }
  if (!response.ok) {
    const error = new Error(`${data.status || response.status}: ${data.message || "request failed"}`);
    error.body = data;
    throw error;
  }
  return data;
}

// --- submit ---------------------------------------------------------------------------------

async function loadSamplePlan() {
  try {
    const plan = await api("GET", "/ui/sample-plan");
    $("#plan-json").value = JSON.stringify(plan, null, 2);
  } catch (error) {
    showError("#submit-error", `could not load the sample plan: ${error.message}`);
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
    const answer = await api("POST", "/workflows", {
      user: $("#requester").value.trim(),
      body: { title: $("#plan-title").value, plan },
    });
    await refreshList();
    render(answer.workflow);
  } catch (error) {
    showError("#submit-error", error.message);
  }
}

// --- list -----------------------------------------------------------------------------------

async function refreshList() {
  try {
    const answer = await api("GET", "/workflows?page_size=50");
    showError("#list-error", "");
    renderList(answer.workflows || []);
  } catch (error) {
    showError("#list-error", error.message);
  }
}

function progressText(progress) {
  const p = progress || {};
  return `${p.done || 0}/${p.total || 0}`;
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
    if (status === "AWAITING_APPROVAL") {
      const approve = element("button", "Approve", "small approve");
      approve.type = "button";
      approve.addEventListener("click", (e) => { e.stopPropagation(); approveWorkflow(workflow.workflow_id); });
      const reject = element("button", "Reject", "small reject");
      reject.type = "button";
      reject.addEventListener("click", (e) => { e.stopPropagation(); rejectWorkflow(workflow.workflow_id); });
      actions.append(approve, " ", reject);
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
    const answer = await api("GET", `/workflows/${encodeURIComponent(workflowId)}`);
    render(answer.workflow);
  } catch (error) {
    showError("#list-error", error.message);
  }
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

function render(workflow) {
  const changed = state.selected !== workflow.workflow_id;
  if (changed) {
    closeStream();
    state.selected = workflow.workflow_id;
    state.seen = new Set();
    $("#event-log").replaceChildren();
    showError("#action-error", "");
  }
  for (const row of document.querySelectorAll("#workflow-table tbody tr")) {
    row.classList.toggle("selected", row.dataset.workflowId === workflow.workflow_id);
  }
  $("#detail").hidden = false;
  $("#detail-id").textContent = workflow.workflow_id;
  $("#detail-title").textContent = workflow.title || "";
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
  renderFindings(workflow.result);
}

function renderFindings(result) {
  const body = $("#findings tbody");
  body.replaceChildren();
  let count = 0;
  const steps = (result && Array.isArray(result.steps)) ? result.steps : [];
  for (const step of steps) {
    const findings = (step.result && Array.isArray(step.result.findings)) ? step.result.findings : [];
    for (const finding of findings) {
      const row = element("tr");
      row.append(
        element("td", finding.procedure || step.procedure),
        element("td", finding.severity, `sev-${finding.severity}`),
        element("td", (finding.entry_ids || []).join(", ")),
        element("td", finding.amount),
        element("td", finding.explanation),
      );
      body.append(row);
      count += 1;
    }
  }
  $("#findings").hidden = count === 0;
  $("#no-findings").hidden = count !== 0 || steps.length === 0;
  $("#findings").dataset.count = String(count);
}

// --- decisions ------------------------------------------------------------------------------

async function approveWorkflow(workflowId) {
  showError("#action-error", "");
  try {
    const answer = await api("POST", `/workflows/${encodeURIComponent(workflowId)}/approve`, {
      user: $("#reviewer").value.trim(),
      body: { comment: $("#decision-comment").value },
    });
    // The seed's contract: switch to the processing view on the answer, before any event.
    if (state.selected !== workflowId) render(answer.workflow);
    setStatus(answer.workflow_status);
    setView("processing");
    $("#processing-message").textContent = answer.processing_message || "Processing in the background…";
    if (answer.workflow) setProgress(answer.workflow.progress);
    markListRow(workflowId, answer.workflow_status, answer.workflow && answer.workflow.progress);
    openStream(workflowId);
  } catch (error) {
    if (state.selected !== workflowId) await select(workflowId);
    showError("#action-error", error.message);
  }
}

async function rejectWorkflow(workflowId) {
  showError("#action-error", "");
  const comment = $("#decision-comment").value;
  try {
    const answer = await api("POST", `/workflows/${encodeURIComponent(workflowId)}/reject`, {
      user: $("#reviewer").value.trim(),
      body: { comment },
    });
    render(answer.workflow);
    markListRow(workflowId, answer.workflow.status, answer.workflow.progress);
  } catch (error) {
    showError("#action-error", error.message);
  }
}

async function cancelWorkflow() {
  const workflowId = state.selected;
  if (!workflowId) return;
  try {
    await api("POST", `/workflows/${encodeURIComponent(workflowId)}/cancel`, {
      user: $("#reviewer").value.trim(),
      body: { reason: "cancelled from the status page" },
    });
  } catch (error) {
    showError("#action-error", error.message);
  }
}

// --- live status ----------------------------------------------------------------------------

function closeStream() {
  if (state.source) {
    state.source.close();
    state.source = null;
  }
}

function openStream(workflowId) {
  if (state.source && state.source.workflowId === workflowId) return;
  closeStream();
  // EventSource reconnects by itself, sending Last-Event-ID: the server resumes after it.
  const source = new EventSource(`/workflows/${encodeURIComponent(workflowId)}/status/stream`);
  source.workflowId = workflowId;
  state.source = source;
  source.onmessage = (message) => {
    if (state.selected !== workflowId) return;
    let data;
    try {
      data = JSON.parse(message.data);
    } catch (_) {
      return;
    }
    onUpdate(workflowId, data);
  };
  source.addEventListener("end", () => finishStream(workflowId));
  source.addEventListener("error", (message) => {
    if (message.data) {  // an error the server sent, not a dropped connection
      try {
        const body = JSON.parse(message.data);
        showError("#action-error", `${body.status}: ${body.message}`);
      } catch (_) { /* ignore */ }
      finishStream(workflowId);
    }
  });
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
    finishStream(workflowId);
  } else if (snapshot.is_processing || PROCESSING.has(status)) {
    setView("processing");
    if (snapshot.last_message) $("#processing-message").textContent = snapshot.last_message;
  }
}

async function finishStream(workflowId) {
  if (state.source && state.source.workflowId === workflowId) closeStream();
  if (state.selected !== workflowId) return;
  try {
    const answer = await api("GET", `/workflows/${encodeURIComponent(workflowId)}`);
    if (state.selected !== workflowId) return;
    const status = shortStatus(answer.workflow.status);
    if (TERMINAL.has(status)) {
      setStatus(answer.workflow.status);
      setProgress(answer.workflow.progress);
      showDone(answer.workflow);
      markListRow(workflowId, answer.workflow.status, answer.workflow.progress);
    } else {
      openStream(workflowId);  // the stream ended early (server restart): watch again
    }
  } catch (error) {
    showError("#action-error", error.message);
  }
}

// --- start ----------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#plan-form").addEventListener("submit", submitPlan);
  $("#refresh").addEventListener("click", refreshList);
  $("#approve").addEventListener("click", () => state.selected && approveWorkflow(state.selected));
  $("#reject").addEventListener("click", () => state.selected && rejectWorkflow(state.selected));
  $("#cancel").addEventListener("click", cancelWorkflow);
  loadSamplePlan();
  refreshList();
});

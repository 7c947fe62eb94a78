// A workflow's run, on its page: the progress, each step's status, cycles, duration and findings
// while it runs (from the status stream), and once it has ended the findings table, a page at a
// time, filtered by procedure, with exports.
"use strict";

const RUN_STEP_STATES = { pending: "waiting", running: "running", done: "done", failed: "failed", cancelled: "cancelled" };

function setView(view) {
  $("#detail").dataset.view = view;
  $("#awaiting-view").hidden = view !== "awaiting";
  $("#processing-view").hidden = view !== "processing";
  $("#done-view").hidden = view !== "done";
}

function setProgress(progress) {
  const p = progress || {};
  const bar = $("#progress");
  bar.max = Math.max(p.total || 0, 1);
  bar.value = p.done || 0;
  const percent = p.total ? Math.round((100 * (p.done || 0)) / p.total) : 0;
  $("#progress-text").textContent = `${p.done || 0} of ${p.total || 0} steps (${percent} %)`;
}

// The run part of render() (review.js): which view, and the status stream.
function renderRun(workflow) {
  if (!state.run || state.run.workflowId !== workflow.workflow_id) state.run = newRun(workflow);
  setProgress(workflow.progress);
  const status = shortStatus(workflow.status);
  const ran = TERMINAL.has(status) ? Boolean(workflow.decided_by) && status !== "REJECTED" : PROCESSING.has(status);
  $("#steps-view").hidden = !ran;
  if (TERMINAL.has(status)) {
    if ($("#detail").dataset.view !== "done") showDone(workflow);
  } else if (workflow.is_processing || PROCESSING.has(status)) {
    setView("processing");
    $("#processing-message").textContent = workflow.last_message || "Processing in the background…";
  } else {
    setView(status === "AWAITING_APPROVAL" ? "awaiting" : "");
  }
  // A finished workflow's events are read once; a live one's stream reopens if it stopped.
  if (!TERMINAL.has(status) || !state.run.opened) openStream(workflow.workflow_id);
}

function newRun(workflow) {
  const steps = (workflow.plan || []).map((step) => (
    { procedure: step.procedure, status: "pending", cycles: 0, started: 0, ended: 0, findings: null }));
  return { workflowId: workflow.workflow_id, opened: false, current: 0, steps };
}

// --- each step, from the events -------------------------------------------------------------

// An event moves the steps along: a cycle counts for the step being worked on, and the event's
// progress says how many steps are done.
function onRunEvent(event) {
  const run = state.run;
  if (!run) return;
  const type = shortEvent(event.type);
  const time = event.time ? Date.parse(event.time) : Date.now();
  const working = run.steps[run.current];
  if (working && ["STARTED", "CYCLE_COMPLETED", "CYCLE_FAILED"].includes(type) && !working.started) {
    working.started = time;
    working.status = "running";
  }
  if (working && (type === "CYCLE_COMPLETED" || type === "CYCLE_FAILED")) working.cycles += 1;
  const done = type === "COMPLETED" ? run.steps.length : Number((event.progress && event.progress.done) || 0);
  while (run.current < Math.min(done, run.steps.length)) finishStep(run, time);
  const still = run.steps[run.current];
  if (still && still.status === "running" && (type === "FAILED" || type === "CANCELLED")) {
    still.status = type.toLowerCase();
    still.ended = time;
  }
  drawSteps();
}

function finishStep(run, time) {
  const step = run.steps[run.current];
  step.status = "done";
  step.started = step.started || time;
  step.ended = time;
  run.current += 1;
  if (!TERMINAL.has(shortStatus(state.workflow && state.workflow.status))) countFindings(run, run.current);
  const next = run.steps[run.current];
  if (next) {
    next.status = "running";
    next.started = time;
  }
}

// A step's findings while the run goes on (a finished run's come from its result).
async function countFindings(run, number) {
  try {
    const query = new URLSearchParams({ page_size: "1", "filter.steps": String(number) });
    const page = await api("GET", workflowPath(run.workflowId, `/findings?${query}`));
    if (state.run !== run) return;
    run.steps[number - 1].findings = Number(page.total || 0);
    drawSteps();
  } catch (_) { /* the count stays unknown; the findings table has them once the run ends */ }
}

function drawSteps() {
  const run = state.run;
  const body = $("#step-status tbody");
  body.replaceChildren();
  const shown = run.steps.slice(0, SHOW_FIRST);
  shown.forEach((step, index) => body.append(stepRow(step, index)));
  if (run.steps.length > SHOW_FIRST) {
    const row = element("tr");
    const cell = element("td", `…and ${run.steps.length - SHOW_FIRST} more steps (${run.current} done in all)`);
    cell.colSpan = 5;
    row.append(cell);
    body.append(row);
  }
}

function stepRow(step, index) {
  const row = element("tr", null, `step-${step.status}`);
  const duration = step.started ? (((step.ended || Date.now()) - step.started) / 1000).toFixed(1) + " s" : "";
  row.append(
    element("td", `${index + 1}. ${step.procedure}`),
    element("td", RUN_STEP_STATES[step.status]),
    element("td", step.cycles),
    element("td", duration),
    element("td", step.findings === null ? "" : step.findings),
  );
  return row;
}

// The step summaries of a finished run give each step's findings.
function countsFromResult(workflow) {
  const steps = (workflow.result && Array.isArray(workflow.result.steps)) ? workflow.result.steps : [];
  steps.forEach((step, index) => {
    const summary = step.result && step.result.summary;
    if (state.run.steps[index] && summary && summary.findings !== undefined) {
      state.run.steps[index].findings = Number(summary.findings);
    }
  });
  drawSteps();
}
// --- the status stream ----------------------------------------------------------------------
//
// GET /workflows/{id}/status/stream: every event of the workflow from the first, then each as it
// happens, with a snapshot of its status. The page keeps the last event id and, after a dropped connection, reconnects with Last-Event-ID (the
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
  if (state.run && state.run.workflowId === workflowId) state.run.opened = true;
  watch(stream);
}

const isCurrent = (stream) => state.stream === stream;

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
  return readEvents(response, stream, () => isCurrent(stream), (event) => onStreamEvent(stream, session, event));
}

async function refusedStream(stream, response, session) {
  const body = await readJson(response);
  if (worthRetrying(response, stream)) return "dropped";
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


function onUpdate(workflowId, data) {
  const event = data.event;
  if (event && !state.seen.has(event.sequence)) {
    state.seen.add(event.sequence);
    const time = event.time ? new Date(event.time).toLocaleTimeString() : "";
    const text = `#${event.sequence} ${time} ${shortEvent(event.type)}${event.message ? ": " + event.message : ""}`;
    const item = element("li", text);
    item.dataset.type = shortEvent(event.type);
    $("#event-log").append(item);
    onRunEvent(event);
    if (["REVISED", "CHANGES_REQUESTED", "APPROVAL_RECORDED"].includes(item.dataset.type)) reread(workflowId);
  }
  const snapshot = data.snapshot;
  if (!snapshot) return;
  const status = shortStatus(snapshot.status);
  setStatus(snapshot.status);
  setProgress(snapshot.progress);
  if (TERMINAL.has(status)) {
    if ($("#detail").dataset.view !== "done") showIfEnded(workflowId);
  } else if (snapshot.is_processing || PROCESSING.has(status)) {
    setView("processing");
    $("#awaiting-view").hidden = true;
    $("#steps-view").hidden = false;
    if (snapshot.last_message) $("#processing-message").textContent = snapshot.last_message;
  }
}

// Someone else acted on the plan on screen (a revision, a request for changes, an approval):
// read it again, so that what the page shows, and the etag a decision sends, stay current.
async function reread(workflowId) {
  try {
    const answer = await api("GET", workflowPath(workflowId));
    const before = state.workflow;
    if (state.selected === workflowId && before && answer.workflow.etag !== before.etag) {
      render(answer.workflow);
      const revision = answer.workflow.revision || 1;
      if (revision !== (before.revision || 1)) {
        showActionNote(`The plan was revised while you had it open (revision ${before.revision || 1} → ${revision}): ` +
          "read the changes and the plan below before you decide.");
      }
    } else if (state.selected === workflowId) {
      state.workflow = answer.workflow;  // the same plan: only its approvals changed
      renderApprovals(answer.workflow);
      applyRoles();
    }
  } catch (error) {
    report("#action-error", error);
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
    return true;
  } catch (error) {
    report("#action-error", error);
    return true;
  }
}

// --- the findings ---------------------------------------------------------------------------

function showDone(workflow) {
  setView("done");
  const status = shortStatus(workflow.status);
  let message = `Workflow ${status.toLowerCase()}.`;
  if (workflow.error && workflow.error.message) message += ` ${workflow.error.reason}: ${workflow.error.message}`;
  if (workflow.decision_comment) message += ` Comment: ${workflow.decision_comment}`;
  $("#done-message").textContent = message;
  countsFromResult(workflow);
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
  const select = $("#findings-procedure");
  const procedures = [...new Set((workflow.plan || []).map((step) => step.procedure))];
  select.replaceChildren(element("option", "every procedure"));
  select.firstChild.value = "";
  for (const procedure of procedures) select.append(element("option", procedure));
  $("#findings-filter").hidden = procedures.length < 2;
  showFindings(workflow.workflow_id, "");
}

function showFindings(workflowId, procedure) {
  $("#findings tbody").replaceChildren();
  state.findings = { workflowId, procedure, token: "", shown: 0 };
  loadFindings();
}

function summaryText(summary) {
  const count = Number(summary.findings || 0);
  if (!count) return "no findings";
  const by = summary.by_severity || {};
  const split = ["high", "medium", "low"].filter((s) => by[s]).map((s) => `${by[s]} ${s}`).join(", ");
  return `${count} finding${count === 1 ? "" : "s"}${split ? ` (${split})` : ""}, ${summary.amount_at_stake} at stake`;
}

// The API's query for the findings shown (one procedure's, or all).
function findingsQuery(wanted, extra) {
  const query = new URLSearchParams(extra);
  if (wanted.procedure) query.set("filter.procedures", wanted.procedure);
  return query;
}

async function loadFindings() {
  const wanted = state.findings;
  if (!wanted) return;
  showError("#findings-error", "");
  const query = findingsQuery(wanted, { page_size: "50" });
  if (wanted.token) query.set("page_token", wanted.token);
  let page;
  try {
    page = await api("GET", workflowPath(wanted.workflowId, `/findings?${query}`));
  } catch (error) {
    report("#findings-error", error);
    return;
  }
  if (state.findings !== wanted) return;  // another workflow or filter meanwhile
  const body = $("#findings tbody");
  for (const finding of page.findings || []) body.append(findingRow(finding));
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

function findingRow(finding) {
  const row = element("tr");
  const ids = (finding.entry_ids || []).join(", ");
  const more = Number(finding.entry_count || 0) - (finding.entry_ids || []).length;
  row.append(
    element("td", finding.finding_id),
    element("td", finding.severity, `sev-${finding.severity}`),
    element("td", finding.step),
    element("td", finding.procedure),
    element("td", more > 0 ? `${ids} (+${more})` : ids),
    element("td", finding.amount, "amount"),
    element("td", finding.explanation),
  );
  // On a narrow screen each finding is a card, its cells labelled with their column's name.
  const names = [...$("#findings thead tr").cells].map((cell) => cell.textContent);
  [...row.cells].forEach((cell, index) => { cell.dataset.label = names[index]; });
  return row;
}

// A download needs the Authorization header, which a link cannot send: fetch, then save.
async function exportFindings(format) {
  const wanted = state.findings;
  if (!wanted) return;
  showError("#findings-error", "");
  const query = findingsQuery(wanted, { format });
  let response;
  try {
    response = await fetch(workflowPath(wanted.workflowId, `/findings/export?${query}`), { headers: withAuth({}) });
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
  link.download = `${wanted.workflowId}-findings${wanted.procedure ? "-" + wanted.procedure : ""}.${format}`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

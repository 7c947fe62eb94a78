// The list of workflows: three views ("Awaiting my approval", "Mine", "All"), a status filter
// and a title search, all kept in the page's URL (/ui/queue?view=all&status=RUNNING&q=ledger),
// so that a reload or a link shows the same list.
//
// The list comes from the watch stream (GET /workflows:watch, Server-Sent Events): first the
// rows of the first page, then `synced` with the token of the next page ("Load more" reads it
// with GET /workflows), then every change as it happens: the list stays current without a
// reload. After a dropped connection the page reconnects with the last resume token and the
// server sends only what was missed.
"use strict";

const PAGE_SIZE = 50;
const LIVE = "Live: changes show as they happen.";
const VIEWS = { awaiting: "Awaiting my approval", mine: "Mine", all: "All" };

// Approvers start with their work queue, submitters with their own plans.
function defaultView() {
  if (may.decide()) return "awaiting";
  return may.submit() ? "mine" : "all";
}

// The list's filters, from the page's URL; the status filter belongs to the "All" view.
function queueFilters(params) {
  const view = Object.hasOwn(VIEWS, params.get("view") || "") ? params.get("view") : defaultView();
  const status = view === "all" ? params.get("status") || "" : "";
  return { view, status, q: (params.get("q") || "").trim() };
}

function queueUrl(filters) {
  const query = new URLSearchParams({ view: filters.view });
  if (filters.status) query.set("status", filters.status);
  if (filters.q) query.set("q", filters.q);
  return `/ui/queue?${query}`;
}

// The API's query parameters for `filters`, shared by the watch and "Load more".
function filterQuery(filters) {
  const query = new URLSearchParams({ page_size: String(PAGE_SIZE) });
  if (filters.view === "awaiting") query.set("awaiting_my_approval", "true");
  if (filters.view === "mine") query.set("created_by_me", "true");
  if (filters.status) query.set("statuses", `WORKFLOW_STATUS_${filters.status}`);
  if (filters.q) query.set("title_contains", filters.q);
  return query;
}

const sameFilters = (a, b) => a.view === b.view && a.status === b.status && a.q === b.q;

function showQueue(params) {
  const filters = queueFilters(params);
  $("#workflows").hidden = false;
  $("#submit").hidden = false;
  for (const link of document.querySelectorAll("#workflows a[data-view]")) {
    link.href = queueUrl({ ...filters, view: link.dataset.view, status: link.dataset.view === "all" ? filters.status : "" });
    if (link.dataset.view === filters.view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  $("#filter-status").value = filters.status;
  $("#filter-status").disabled = filters.view !== "all";
  $("#filter-title").value = filters.q;
  document.title = `${VIEWS[filters.view]} · auditflow`;
  focusView("#workflows-heading");
  if (!state.queue || !sameFilters(state.queue.filters, filters)) openQueue(filters);
  return queueUrl(filters);
}

function applyFilters(event) {
  event.preventDefault();
  const view = state.queue ? state.queue.filters.view : defaultView();
  navigate(queueUrl({ view, status: view === "all" ? $("#filter-status").value : "", q: $("#filter-title").value.trim() }));
}

function closeQueue() {
  if (state.queue) state.queue.controller.abort();
  state.queue = null;
  $("#workflow-table tbody").replaceChildren();
  $("#load-more").hidden = true;
  $("#list-empty").hidden = true;
  $("#workflows").hidden = true;
  $("#submit").hidden = true;
}

function openQueue(filters) {
  if (state.queue) state.queue.controller.abort();
  const queue = {
    filters,
    controller: new AbortController(),
    resumeToken: "",    // where the watch resumes after a dropped connection
    nextPageToken: "",  // the page after the rows shown ("Load more")
    synced: false,      // the first page is in: ADDED now means a new workflow
    retry: RETRY_MIN_MS,
    delay: RETRY_MIN_MS,
    finished: null,
  };
  state.queue = queue;
  $("#workflow-table tbody").replaceChildren();
  $("#list-caption").textContent = `Workflows: ${VIEWS[filters.view]}`;
  showError("#list-error", "");
  setLive("Loading…");
  watchQueue(queue);
}

const isQueue = (queue) => state.queue === queue;

function setLive(text) {
  $("#list-live").textContent = text;
}

async function watchQueue(queue) {
  while (isQueue(queue)) {
    let outcome;
    try {
      outcome = await readQueue(queue);
    } catch (_) {
      outcome = "dropped";  // a network error, or our own abort (then the loop ends below)
    }
    if (outcome === "refused" || !isQueue(queue)) break;
    if (outcome === "restart") continue;
    setLive("Connection lost; reconnecting…");
    await pause(queue.delay, queue.controller.signal);
    queue.delay = Math.min(queue.delay * 2, Math.max(RETRY_MAX_MS, queue.retry));
  }
}

// One connection: "dropped" (reconnect and resume), "restart" (list afresh) or "refused".
async function readQueue(queue) {
  queue.finished = null;
  const session = state.session;
  const query = filterQuery(queue.filters);
  if (queue.resumeToken) query.set("resume_token", queue.resumeToken);
  const response = await fetch(`/workflows:watch?${query}`, {
    headers: withAuth({ Accept: "text/event-stream" }),
    cache: "no-store",
    signal: queue.controller.signal,
  });
  if (!response.ok) return refusedQueue(queue, response, session);
  if (!queue.resumeToken) restartList(queue);
  return readEvents(response, queue, () => isQueue(queue), (event) => onQueueEvent(queue, session, event));
}

function restartList(queue) {
  queue.synced = false;
  queue.nextPageToken = "";
  $("#workflow-table tbody").replaceChildren();
}

async function refusedQueue(queue, response, session) {
  const body = await readJson(response);
  if (worthRetrying(response, queue)) return "dropped";
  if (response.status === 401) {
    onUnauthenticated(session, body);
    return "refused";
  }
  if (queue.resumeToken && response.status < 500) {
    queue.resumeToken = "";  // too old to resume from: list afresh
    return "restart";
  }
  if (response.status === 404 || response.status === 501) {
    await listOnce(queue);  // a gateway without the watch: the list, without live updates
    return "refused";
  }
  if (isQueue(queue)) showError("#list-error", errorText(response.status, body));
  setLive("");
  return "refused";
}

function onQueueEvent(queue, session, { type, data }) {
  if (!isQueue(queue)) return;
  let message;
  try {
    message = JSON.parse(data);
  } catch (_) {
    return;
  }
  if (type === "end") {
    queue.finished = "dropped";  // the gateway is stopping: resume from another one
  } else if (type === "error") {
    queue.finished = "refused";
    if (message.status === "UNAUTHENTICATED") onUnauthenticated(session, message);
    else showError("#list-error", errorText("error", message));
  } else {
    queue.delay = queue.retry;
    if (message.resume_token) queue.resumeToken = message.resume_token;
    if (queue.synced) setLive(LIVE);  // (again, after a reconnection)
    if (message.change) applyChange(queue, message.change);
    if (message.synced) synced(queue, message.synced.next_page_token || "");
  }
}

function synced(queue, nextPageToken) {
  queue.synced = true;
  setNextPage(queue, nextPageToken);
  setLive(LIVE);
}

function setNextPage(queue, token) {
  queue.nextPageToken = token;
  $("#load-more").hidden = !token;
  $("#list-empty").hidden = $("#workflow-table tbody").rows.length > 0 || Boolean(token);
}

// A change may come twice, or late (the server promises none is lost, not that none repeats):
// a row keeps the newest state of its workflow, and a workflow the list did not show goes where
// it belongs in the list's order (newest first), unless it belongs to a page not loaded yet.
function applyChange(queue, change) {
  const workflow = change.workflow;
  if (!workflow || !workflow.workflow_id) return;
  const type = String(change.type || "").replace(/^CHANGE_TYPE_/, "");
  const row = listRow(workflow.workflow_id);
  if (type === "REMOVED") {
    if (row) row.remove();
  } else if (row) {
    if (Number(workflow.last_sequence || 0) >= Number(row.dataset.sequence || 0)) row.replaceWith(newRow(workflow));
  } else if (!queue.synced) {
    $("#workflow-table tbody").append(newRow(workflow));  // the first page, in the list's order
  } else {
    placeRow(queue, newRow(workflow));
  }
  if (queue.synced) setNextPage(queue, queue.nextPageToken);
}

// Newest first: before the first row listed after it.
function placeRow(queue, row) {
  const key = listOrder(row);
  for (const other of $("#workflow-table tbody").rows) {
    if (listOrder(other) < key) {
      other.before(row);
      return;
    }
  }
  if (!queue.nextPageToken) $("#workflow-table tbody").append(row);  // else "Load more" brings it
}

const listOrder = (row) => `${row.dataset.created}|${row.dataset.workflowId}`;

async function loadMore() {
  const queue = state.queue;
  if (!queue || !queue.nextPageToken) return;
  const query = filterQuery(queue.filters);
  query.set("page_token", queue.nextPageToken);
  $("#load-more").disabled = true;
  try {
    const answer = await api("GET", `/workflows?${query}`);
    if (!isQueue(queue)) return;
    for (const workflow of answer.workflows || []) {
      if (!listRow(workflow.workflow_id)) $("#workflow-table tbody").append(newRow(workflow));
    }
    setNextPage(queue, answer.next_page_token || "");
  } catch (error) {
    report("#list-error", error);
  } finally {
    $("#load-more").disabled = false;
  }
}

// Without a watch stream: the first page, once.
async function listOnce(queue) {
  try {
    const answer = await api("GET", `/workflows?${filterQuery(queue.filters)}`);
    if (!isQueue(queue)) return;
    restartList(queue);
    for (const workflow of answer.workflows || []) $("#workflow-table tbody").append(newRow(workflow));
    queue.synced = true;
    setNextPage(queue, answer.next_page_token || "");
    setLive("Reload the page to see changes.");
  } catch (error) {
    report("#list-error", error);
  }
}

const listRow = (workflowId) =>
  document.querySelector(`#workflow-table tr[data-workflow-id="${CSS.escape(workflowId)}"]`);

function progressText(progress) {
  const p = progress || {};
  return `${p.done || 0}/${p.total || 0}`;
}

function newRow(workflow) {
  const row = element("tr");
  row.dataset.workflowId = workflow.workflow_id;
  row.dataset.sequence = String(workflow.last_sequence || 0);
  row.dataset.created = new Date(workflow.created_at || 0).toISOString();  // sorts as it reads
  const link = element("a", workflow.workflow_id);
  link.href = workflowPage(workflow.workflow_id);
  link.dataset.nav = "";
  const id = element("td");
  id.append(link);
  const status = shortStatus(workflow.status);
  const badge = element("td");
  badge.append(element("span", status, `badge ${status}`));
  const { given, required } = approvalCount(workflow);
  row.append(id, element("td", workflow.title), element("td", workflow.created_by), badge,
    element("td", `${given} of ${required}`), element("td", progressText(workflow.progress)));
  row.addEventListener("click", (event) => {
    if (event.target.closest("a")) return;  // the link navigates by itself
    navigate(workflowPage(workflow.workflow_id));
  });
  return row;
}

// The auditflow page: plain JavaScript over the REST API, no build step. This file holds what
// every part needs (calling the API, signing in, the caller's roles, submitting a plan);
// queue.js is the list of workflows, review.js one workflow's plan and the decisions on it,
// run.js its run and findings, start.js the page's URLs (each view has its own, under /ui/).
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
  workflow: null,   // that workflow as last read, the revision on screen (see review.js)
  stream: null,     // the open status stream, see openStream() in run.js
  seen: new Set(),  // event sequences already in the event log
  findings: null,   // the findings shown: {workflowId, procedure, token of the next page, shown}
  queue: null,      // the list on screen and its watch stream, see queue.js
  run: null,        // the shown workflow's steps as its events tell them, see run.js
  focusPending: false,  // a link led to another page: focus its heading once shown (start.js)
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

// The machine-readable reason of a refusal (google.rpc.ErrorInfo), e.g. ETAG_MISMATCH.
function errorReason(body) {
  const info = (Array.isArray(body.details) ? body.details : []).find((detail) => detail && detail.reason);
  return info ? info.reason : "";
}

// A 401 means the credentials stopped working (an expired JWT, a revoked token): back to the
// sign-in form with the server's reason. Answers to requests sent before the last sign-in change nothing.
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
  error.status = response.status;
  error.reason = errorReason(data);
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
  applyRoles();
  if (!$("#plan-json").value) loadSamplePlan();
  route();
}

function showSignIn(message) {
  state.session += 1;
  state.token = null;
  state.me = null;
  clearDetail();
  closeQueue();
  for (const selector of ["#list-error", "#submit-error"]) showError(selector, "");
  for (const selector of ["#signed-in", "#submit", "#workflows", "#not-found"]) $(selector).hidden = true;
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

const isMe = (name) => Boolean(state.me) && nameKey(name) === nameKey(state.me.principal);

const may = {
  submit: () => rank() >= ROLES.indexOf("submitter"),
  decide: () => rank() >= ROLES.indexOf("approver"),
  // An approver decides on plans submitted by others, once for each revision.
  decideOn: (workflow) =>
    may.decide() && !isMe(workflow.created_by) && !(workflow.approvals || []).some((a) => isMe(a.approver)),
  // A submitter cancels what they submitted; an admin anything.
  cancel: (workflow) =>
    rank() >= ROLES.indexOf("admin") ||
    (may.submit() && Boolean(workflow) && isMe(workflow.created_by)),
};

// Hide or disable what the caller's roles do not allow. Only a courtesy: the server decides,
// and the page shows its 403 if it refuses.
function applyRoles() {
  const canSubmit = may.submit();
  $("#plan-fields").disabled = !canSubmit;
  $("#submit-note").hidden = canSubmit;
  $("#submit-note").textContent = `Submitting a plan needs the submitter role; you have ${rolesText()}.`;
  applyDecisionRoles();
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
    navigate(workflowPage(answer.workflow.workflow_id));
  } catch (error) {
    report("#submit-error", error);
  }
}


// --- Server-Sent Events over fetch() ---------------------------------------------------------
//
// EventSource cannot send an Authorization header, so the page reads event streams itself (the
// status stream of one workflow in run.js, the watch of the list in queue.js).

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

// One connection's events: onEvent for each, the server's `retry:` kept as the shortest wait
// before the next connection, until the server closes it, `conn` is no longer wanted, or
// `conn.finished` says why it ended ("dropped" otherwise).
async function readEvents(response, conn, wanted, onEvent) {
  const feed = sseParser({
    onEvent,
    onRetry: (ms) => { conn.retry = ms; conn.delay = Math.max(conn.delay, ms); },
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  while (wanted() && !conn.finished) {
    const { value, done } = await reader.read();
    if (done) break;
    feed(value);
  }
  reader.cancel().catch(() => {});  // (already closed, or aborted: nothing to do)
  return conn.finished || "dropped";
}

// A refusal worth another try later: a restart or an overload (5xx), or the caller's own rate
// limit (429), whose Retry-After (seconds) becomes the wait before the next connection.
function worthRetrying(response, conn) {
  if (response.status === 429) {
    const seconds = Number(response.headers.get("Retry-After"));
    if (seconds > 0) conn.delay = Math.max(conn.delay, Math.min(seconds * 1000, 60_000));
    return true;
  }
  return response.status >= 500 && response.status !== 501;
}

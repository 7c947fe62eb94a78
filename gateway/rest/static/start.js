// The page's URLs, all under /ui/ so that none collides with the REST API's paths:
//   /ui/queue?view=awaiting|mine|all&status=RUNNING&q=title  the list of workflows
//   /ui/workflows/{id}                                      one workflow
// Links change the URL with the History API (back and forward work), and a reload or a link
// sent to a colleague opens the same view.
"use strict";

function navigate(url) {
  const from = location.pathname;
  if (url !== location.pathname + location.search) history.pushState(null, "", url);
  state.focusPending = location.pathname !== from;  // another page, not a new filter of the list
  route();
}

// After a link to another page, keyboard focus starts at its heading once it shows.
function focusView(heading) {
  if (!state.focusPending) return;
  state.focusPending = false;
  $(heading).focus();
}

// Show what the URL names (once signed in: before that, the sign-in form keeps it for later).
function route() {
  if (!state.me) return;
  const match = location.pathname.match(/^\/ui\/workflows\/([^/]+)\/?$/);
  if (match) {
    showWorkflowPage(decodeURIComponent(match[1]));
    return;
  }
  clearDetail();
  $("#not-found").hidden = true;
  const url = showQueue(new URLSearchParams(location.search));
  if (url !== location.pathname + location.search) history.replaceState(null, "", url);  // the view in the URL
}

// Links marked data-nav change the view without loading the page (a new tab still works).
function onLinkClick(event) {
  const link = event.target.closest("a[data-nav]");
  if (!link || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  navigate(link.getAttribute("href"));
}

document.addEventListener("DOMContentLoaded", () => {
  $("#signin-form").addEventListener("submit", signIn);
  $("#sign-out").addEventListener("click", signOut);
  $("#plan-form").addEventListener("submit", submitPlan);
  $("#filters").addEventListener("submit", applyFilters);
  $("#filter-status").addEventListener("change", applyFilters);
  $("#load-more").addEventListener("click", loadMore);
  $("#approve").addEventListener("click", approveShown);
  $("#reject").addEventListener("click", rejectShown);
  $("#request-changes").addEventListener("click", requestChangesShown);
  $("#decision-reason").addEventListener("input", applyDecisionRoles);
  $("#refresh-data").addEventListener("click", refreshData);
  $("#cancel").addEventListener("click", cancelWorkflow);
  $("#cancel-awaiting").addEventListener("click", cancelWorkflow);
  $("#more-findings").addEventListener("click", loadFindings);
  $("#findings-procedure").addEventListener("change", (event) => {
    if (state.findings) showFindings(state.findings.workflowId, event.target.value);
  });
  for (const button of document.querySelectorAll("button.export")) {
    button.addEventListener("click", () => exportFindings(button.dataset.format));
  }
  document.addEventListener("click", onLinkClick);
  window.addEventListener("popstate", route);
  start();
});

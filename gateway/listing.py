"""ListWorkflows' filters and pages, shared with the collection watch's initial list.

A filter has parts that depend on the caller ("created by me", "awaiting my approval"); they
are resolved here, from the authenticated principal, into a `store.ListFilter`. Pages are
keyset-paginated on (created_at, workflow_id), newest first; the token is opaque to clients.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from auditflow import plans
from auditflow.errors import invalid
from auditflow.principal import APPROVER, Principal
from auditflow.v1 import workflow_pb2 as pb
from gateway import pages
from gateway.pages import decode_token
from gateway.store import ListFilter

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
DEFAULT_MAX_PAGE_BYTES = 1024 * 1024
MAX_TITLE_FILTER = 200


class Listing:
    """Pages of workflows through a filter."""

    def __init__(self, *, self_approval: bool = False, max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES) -> None:
        self._self_approval = self_approval
        self._max_page_bytes = max_page_bytes

    def filter_for(
        self,
        caller: Principal,
        statuses: Sequence[int],
        *,
        awaiting_my_approval: bool = False,
        created_by_me: bool = False,
        title_contains: str = "",
    ) -> ListFilter:
        """The filter a caller asked for, checked (INVALID_ARGUMENT names the field)."""
        for status in statuses:
            if status not in pb.WorkflowStatus.values() or status == pb.WORKFLOW_STATUS_UNSPECIFIED:
                raise invalid("statuses", f"not a workflow status: {status}")
        title = plans.check_text(title_contains, "title_contains", MAX_TITLE_FILTER)
        awaiting: str | None = None
        if awaiting_my_approval:
            # Someone who may not approve awaits nothing: the filter matches no workflow.
            awaiting = caller.key if caller.has(APPROVER) else ""
        return ListFilter(
            statuses=tuple(statuses),
            created_by_key=caller.key if created_by_me else None,
            title_contains=title,
            awaiting_key=awaiting,
            self_approval=self._self_approval,
        )

    def request(
        self, filter_: ListFilter, page_size: int, page_token: str, unavailable_since: datetime | None
    ) -> pages.Request | None:
        """ListWorkflows' page as asked for, checked: bounded by rows and by bytes, to be built
        by a page worker (`gateway.pageworkers`); None when the filter can match nothing."""
        size = check_page_size(page_size) or DEFAULT_PAGE_SIZE
        after = decode_token(page_token) if page_token else None
        if filter_.awaiting_key == "":
            return None
        return pages.Request(filter_, after, pages.Bounds(size, self._max_page_bytes), unavailable_since)


def check_page_size(page_size: int) -> int:
    if page_size < 0 or page_size > MAX_PAGE_SIZE:
        raise invalid("page_size", f"must be between 0 (default {DEFAULT_PAGE_SIZE}) and {MAX_PAGE_SIZE}")
    return page_size

"""Who may call what: one declarative table, RPC to the role it needs, checked before any
handler runs (by the gRPC interceptor and by the REST gateway alike).

Roles of people include the ones before them: viewer < submitter < approver < admin. A
gateway calling a processor holds the service role `gateway`, which no person's role implies.
Rules that depend on the workflow, not only on the caller, are the handlers' (and say so
here): a submitter cancels only what they submitted (an admin anything), and nobody approves
a plan they submitted (separation of duties).

A method missing from the table is refused: a new RPC is closed until it gets a row.
"""

from __future__ import annotations

import logging

from auditflow.errors import RoleRequired
from auditflow.principal import ADMIN, APPROVER, GATEWAY, SUBMITTER, VIEWER, Principal

logger = logging.getLogger(__name__)

PUBLIC = "public"  # no credentials needed
AUTHENTICATED = "authenticated"  # any authenticated caller, with or without a role

_WF = "/auditflow.v1.WorkflowService/"
_PROC = "/auditflow.v1.ProcessorService/"

POLICY: dict[str, str] = {
    _WF + "GetWorkflow": VIEWER,
    _WF + "GetStatus": VIEWER,
    _WF + "ListWorkflows": VIEWER,
    _WF + "WatchStatus": VIEWER,
    _WF + "ListFindings": VIEWER,
    _WF + "ExportFindings": VIEWER,
    _WF + "VerifyTrail": VIEWER,
    _WF + "WhoAmI": AUTHENTICATED,
    _WF + "CreateWorkflow": SUBMITTER,
    _WF + "CancelWorkflow": SUBMITTER,  # own workflows only, unless admin (the handler checks)
    _WF + "Approve": APPROVER,  # never one's own plan (the decision transaction checks)
    _WF + "Reject": APPROVER,
    _WF + "RequestChanges": APPROVER,  # never on one's own plan (the transaction checks)
    _WF + "ReviseWorkflow": SUBMITTER,  # own workflows only (the transaction checks)
    _WF + "GetRevision": VIEWER,
    _WF + "WatchWorkflows": VIEWER,
    _PROC + "Enqueue": GATEWAY,
    _PROC + "CancelRun": GATEWAY,
    _PROC + "GetRun": GATEWAY,
    _PROC + "WatchStatus": GATEWAY,
    _PROC + "Follow": GATEWAY,
    _PROC + "ReadEvents": GATEWAY,
    _PROC + "ListFindings": GATEWAY,
    # Probes and tools need no credentials; reflection describes only the public contract.
    "/grpc.health.v1.Health/Check": PUBLIC,
    "/grpc.health.v1.Health/Watch": PUBLIC,
    "/grpc.health.v1.Health/List": PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": PUBLIC,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": PUBLIC,
}

ADMIN_ROLE = ADMIN  # (re-exported for handlers that grant admins more)


def required(method: str) -> str | None:
    """The role `method` needs, PUBLIC, AUTHENTICATED, or None when it has no row."""
    return POLICY.get(method)


def is_public(method: str) -> bool:
    return POLICY.get(method) == PUBLIC


def authorize(method: str, principal: Principal) -> None:
    """Raise RoleRequired unless `principal` may call `method`."""
    role = POLICY.get(method)
    if role is None:
        logger.error("no policy for %s: refused", method)
        raise RoleRequired(f"{method} is not open to anyone", metadata={"method": method})
    if role in (PUBLIC, AUTHENTICATED) or principal.has(role):
        return
    name = method.rsplit("/", 1)[-1]
    raise RoleRequired(
        f"{name} needs the {role} role; {principal.name} has {_roles(principal)}",
        metadata={"method": name, "required_role": role},
    )


def _roles(principal: Principal) -> str:
    return ", ".join(sorted(principal.roles)) or "no role"


__all__ = ["ADMIN_ROLE", "APPROVER", "AUTHENTICATED", "GATEWAY", "POLICY", "PUBLIC", "SUBMITTER", "VIEWER"]

"""Domain exceptions and their gRPC status codes.

Handlers raise these; `auditflow.interceptor` turns them into status codes with
`google.rpc` details in one place. A class docstring is the default message, as in
procrastinate's hierarchy.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

DOMAIN = "auditflow.dev"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (becomes a google.rpc.BadRequest field violation)."""

    field: str
    description: str
    limit: str = ""  # a configured limit it is past (counted in auditflow_limit_refusals_total)


class AuditflowError(Exception):
    """Something went wrong in auditflow."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(
        self,
        message: str | None = None,
        *,
        metadata: dict[str, str] | None = None,
        violations: list[FieldViolation] | None = None,
        reason: str | None = None,
    ) -> None:
        self.message = message or (self.__doc__ or "").strip().splitlines()[0]
        self.metadata = metadata or {}
        self.violations = violations or []
        if reason is not None:  # (the class's reason otherwise)
            self.reason = reason
        super().__init__(self.message)


class InvalidArgument(AuditflowError):
    """The request is malformed."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class NotFound(AuditflowError):
    """No such workflow."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "WORKFLOW_NOT_FOUND"


class WrongState(AuditflowError):
    """The workflow is not in a state that allows this."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "WRONG_STATE"


class AlreadyDecided(WrongState):
    """A decision was already taken on this workflow."""

    reason = "ALREADY_DECIDED"


class EtagMismatch(AuditflowError):
    """The plan is not the one the caller saw (its etag differs): it was revised since. Read it
    again, review the new revision, then decide.

    FAILED_PRECONDITION (409 over REST): the request names a revision that is no longer the
    current one; retrying it as it is cannot succeed."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "ETAG_MISMATCH"


class OutOfRange(AuditflowError):
    """The request reaches past the end of what exists."""

    code = grpc.StatusCode.OUT_OF_RANGE
    reason = "OUT_OF_RANGE"


class Unauthenticated(AuditflowError):
    """Credentials are required: send 'authorization: Bearer <token>'."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "CREDENTIALS_MISSING"
    # The credentials given were refused (as opposed to none given): REST says
    # `error="invalid_token"` in WWW-Authenticate.
    invalid_token = False


class InvalidToken(Unauthenticated):
    """The token is not valid."""

    reason = "TOKEN_INVALID"
    invalid_token = True


class PermissionDenied(AuditflowError):
    """The caller may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class RoleRequired(PermissionDenied):
    """The caller lacks the role this call needs."""

    reason = "ROLE_REQUIRED"


class Overloaded(AuditflowError):
    """The service is overloaded; try again later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "OVERLOADED"


class LimitExceeded(AuditflowError):
    """The caller is past one of its limits; try again later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "LIMIT_EXCEEDED"

    def __init__(self, message: str, *, limit: str, retry_after: float | None = None, quota: str = "") -> None:
        super().__init__(message, metadata={"limit": limit})
        self.limit = limit
        self.retry_after = retry_after  # seconds until a retry can succeed; None: not the clock's to say
        self.quota = quota  # the quota's subject (google.rpc.QuotaFailure), for a quota, not a rate


class Unavailable(AuditflowError):
    """A service this call depends on is unavailable; try again later."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


def invalid(field: str, description: str) -> InvalidArgument:
    """An InvalidArgument naming one bad field."""
    return InvalidArgument(f"{field}: {description}", violations=[FieldViolation(field, description)])


class CrossSiteRequest(PermissionDenied):
    """A browser was asked by another site to change something here; it is refused."""

    reason = "CROSS_SITE_REQUEST"

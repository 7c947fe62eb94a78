"""What one principal may submit: the size of a plan, and how many plans may await approval
(and WhoAmI's account of every limit of the caller).

Both are the gateway's (`auditflow.limits` holds the rates and streams every server shares).
The plan's size in bytes is checked before anything else reads the plan, so a large one costs
no validation; it, too many steps and parameters too large are refused as INVALID_ARGUMENT
naming the field, like every other bad plan: sending the same plan again can never succeed,
which RESOURCE_EXHAUSTED would suggest. The pending-plan quota is counted in the
transaction that inserts the plan (after the look-up of a retried request id, which is never
refused): the gateway's writes are serialised, so a principal never passes it through this
gateway; replicas writing to one PostgreSQL database at the same moment may each admit one.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, and_, bindparam, func, select

from auditflow import limits, plans
from auditflow.errors import InvalidArgument, invalid
from auditflow.limits import Limiter, LimitSettings, Rate
from auditflow.principal import Principal
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from gateway import store, workflows


@dataclass(frozen=True)
class PlanLimits:
    """A plan's size and its submitter's pending plans; 0 is no limit (the steps and the
    parameters are never more than `auditflow.plans` allows)."""

    max_plan_bytes: int = 0
    max_plan_steps: int = plans.MAX_STEPS
    max_parameters_bytes: int = plans.MAX_PARAMETERS_BYTES
    max_pending_plans: int = 0


NO_QUOTA = PlanLimits()  # (the steps' and parameters' maxima, nothing else)


def check_size(request: wpb.CreateWorkflowRequest, quota: PlanLimits) -> None:
    """Refuse a plan past the size limit before it is parsed any further (its steps and
    parameters are checked with the rest of the plan, `check_plan`)."""
    if not quota.max_plan_bytes:
        return
    size = sum(step.ByteSize() for step in request.plan)
    if size > quota.max_plan_bytes:
        limits.count_refusal("plan_bytes")
        raise invalid("plan", f"too large: {size} bytes, at most {quota.max_plan_bytes}")


def check_plan(request: wpb.CreateWorkflowRequest, quota: PlanLimits) -> None:
    """Every check of a submitted plan, with this gateway's limits (blocking: procedures may
    look at files); a refusal past the steps or the parameters' size counts in the metric."""
    try:
        plans.check_plan(
            request.title,
            request.plan,
            request.max_cycles,
            request.orchestrator,
            max_steps=quota.max_plan_steps,
            max_parameters_bytes=quota.max_parameters_bytes,
        )
    except InvalidArgument as exc:
        for limit in sorted({v.limit for v in exc.violations if v.limit}):
            limits.count_refusal(limit)
        raise


PENDING = (
    select(func.count())
    .select_from(store.workflows)
    .where(
        and_(
            store.workflows.c.status == pb.WORKFLOW_STATUS_AWAITING_APPROVAL,
            store.workflows.c.created_by_key == bindparam("b_key"),
        )
    )
)


def pending(conn: Connection, creator: Principal) -> int:
    """How many of `creator`'s plans await approval."""
    return int(conn.execute(PENDING, {"b_key": creator.key}).scalar_one())


def create(conn: Connection, new: workflows.NewWorkflow, quota: PlanLimits) -> workflows.Outcome:
    """Create, unless the creator's plans awaiting approval are at the quota."""
    check_pending(conn, new.created_by, new.request_id, quota)
    return workflows.create(conn, new)


def check_pending(conn: Connection, creator: Principal, request_id: str, quota: PlanLimits) -> None:
    """Refuse a new plan from a creator whose plans awaiting approval are at the quota (a
    retried request id is answered with its plan, never refused)."""
    limit = quota.max_pending_plans
    if limit <= 0 or (request_id and store.find_by_request(conn, creator.name, request_id) is not None):
        return
    count = pending(conn, creator)
    if count >= limit:
        raise limits.refused(
            "pending_plans",
            f"{creator.name} has {count} plans awaiting approval, the most one principal may; "
            "wait for decisions (or cancel one) before submitting more",
            quota=f"plans awaiting approval of {creator.name}",
        )


def caller_limits(caller: Principal, pending: int, limiter: Limiter | None, quota: PlanLimits) -> wpb.CallerLimits:
    """WhoAmI's account of the caller's limits, and of what it uses of them."""
    rates = limiter.settings if limiter is not None else LimitSettings()
    return wpb.CallerLimits(
        write=_rate(rates.write),
        read=_rate(rates.read),
        watch=_rate(rates.watch),
        max_streams=rates.max_streams,
        open_streams=limiter.open_streams(caller) if limiter is not None else 0,
        max_pending_plans=quota.max_pending_plans,
        pending_plans=pending,
        max_plan_bytes=quota.max_plan_bytes,
        max_plan_steps=quota.max_plan_steps,
        max_parameters_bytes=quota.max_parameters_bytes,
    )


def _rate(rate: Rate) -> wpb.CallRate:
    return wpb.CallRate(per_second=rate.per_second, burst=rate.burst)

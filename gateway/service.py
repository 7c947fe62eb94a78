"""`auditflow.v1.WorkflowService` over gRPC: the adapter from the servicer's signature to the
application layer (`gateway.api`). The interceptor has authenticated the caller and checked
the policy; errors raised here are mapped by it. WatchStatus sends each hub item's wire bytes,
encoded once for every watcher (the interceptor's serializer sends an item's `wire` as is).
The answers that can weigh a mebibyte (`messages.LARGE_ANSWERS`: a whole workflow with its
result) are encoded on a worker thread, not by gRPC on the event loop: encoding 1 MiB holds
the interpreter for a millisecond or more, and every other caller's answer waits. A page of
workflows comes encoded already, from a page worker process (`gateway.pageworkers`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar, cast

from google.protobuf.message import Message

from auditflow.serving import Context
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from gateway.api import WorkflowApi
from gateway.encoded import Encoded
from gateway.hub import Item

M = TypeVar("M", bound=Message)


async def _encoded_off_loop(answer: M) -> M:
    """The answer's wire bytes, made on a worker thread; gRPC sends bytes as they are (the
    interceptor's serializer), so the value stands in for the message it encodes."""
    return cast(M, await asyncio.to_thread(_wire, answer))


def _wire(answer: Message) -> bytes:
    return answer.SerializeToString()


class WorkflowService(wpb_grpc.WorkflowServiceServicer):
    def __init__(self, api: WorkflowApi) -> None:
        self._api = api

    async def CreateWorkflow(self, request: wpb.CreateWorkflowRequest, context: Context) -> wpb.CreateWorkflowResponse:
        return await self._api.CreateWorkflow(request)

    async def GetWorkflow(self, request: wpb.GetWorkflowRequest, context: Context) -> wpb.GetWorkflowResponse:
        return await _encoded_off_loop(await self._api.GetWorkflow(request))

    async def GetStatus(self, request: wpb.GetStatusRequest, context: Context) -> wpb.GetStatusResponse:
        return await self._api.GetStatus(request)

    async def ListWorkflows(self, request: wpb.ListWorkflowsRequest, context: Context) -> wpb.ListWorkflowsResponse:
        return cast(wpb.ListWorkflowsResponse, await self._api.ListWorkflows(request))  # (its wire bytes)

    async def Approve(self, request: wpb.ApproveRequest, context: Context) -> wpb.ApproveResponse:
        return await self._api.Approve(request)

    async def Reject(self, request: wpb.RejectRequest, context: Context) -> wpb.RejectResponse:
        return await self._api.Reject(request)

    async def CancelWorkflow(self, request: wpb.CancelWorkflowRequest, context: Context) -> wpb.CancelWorkflowResponse:
        return await self._api.CancelWorkflow(request)

    def WatchStatus(self, request: wpb.WatchStatusRequest, context: Context) -> AsyncIterator[Item]:  # type: ignore[override]
        # The hub's items, sent as their `wire` bytes (no generator of ours in between: one
        # event reaches a thousand watchers, each layer counts).
        return self._api.WatchStatusMessages(request)

    async def ReviseWorkflow(self, request: wpb.ReviseWorkflowRequest, context: Context) -> wpb.ReviseWorkflowResponse:
        return await self._api.ReviseWorkflow(request)

    async def RequestChanges(self, request: wpb.RequestChangesRequest, context: Context) -> wpb.RequestChangesResponse:
        return await self._api.RequestChanges(request)

    async def GetRevision(self, request: wpb.GetRevisionRequest, context: Context) -> wpb.GetRevisionResponse:
        return await _encoded_off_loop(await self._api.GetRevision(request))

    def WatchWorkflows(self, request: wpb.WatchWorkflowsRequest, context: Context) -> AsyncIterator[Encoded]:  # type: ignore[override]
        # Items sent as their `wire` bytes, as WatchStatus's (never joined: "wire" is one each).
        return cast(AsyncIterator[Encoded], self._api.WatchWorkflows(request))

    async def ListFindings(self, request: wpb.ListFindingsRequest, context: Context) -> wpb.ListFindingsResponse:
        return await _encoded_off_loop(await self._api.ListFindings(request))

    async def ExportFindings(
        self, request: wpb.ExportFindingsRequest, context: Context
    ) -> AsyncIterator[wpb.ExportFindingsResponse]:
        async for chunk in self._api.ExportFindings(request):
            yield chunk

    async def VerifyTrail(self, request: wpb.VerifyTrailRequest, context: Context) -> wpb.VerifyTrailResponse:
        return await self._api.VerifyTrail(request)

    async def WhoAmI(self, request: wpb.WhoAmIRequest, context: Context) -> wpb.WhoAmIResponse:
        return await self._api.WhoAmI(request)

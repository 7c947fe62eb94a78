"""The REST gateway for the web UI: HTTP/JSON routes generated from the `google.api.http`
annotations of auditflow.v1.WorkflowService, served by the gateway process itself
(`auditflow-gateway --rest-port 8080`) with the same handlers, authentication and policy as gRPC.
"""

from gateway.rest.app import RestApp, RestGateway

__all__ = ["RestApp", "RestGateway"]

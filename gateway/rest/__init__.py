"""The thin REST gateway for the web UI: HTTP/JSON routes generated from the
`google.api.http` annotations of auditflow.v1.WorkflowService, forwarded over gRPC.

Runs inside the gateway process (`auditflow-gateway --rest-port 8080`) or on its own
(`python -m gateway.rest --target host:port --port 8080`).
"""

from gateway.rest.app import RestApp, RestGateway

__all__ = ["RestApp", "RestGateway"]

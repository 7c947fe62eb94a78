"""auditflow: human-approved audit workflows run in the background.

This package holds what the gateway and the processor both need: the generated contract
(`auditflow.v1`), the error hierarchy, the server interceptor, storage helpers, the procedure
catalogue, configuration and the client CLI.
"""

__version__ = "0.1.0"

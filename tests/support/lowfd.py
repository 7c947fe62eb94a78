"""`python -m tests.support.lowfd ARGS...`: a gateway with few file descriptors.

Lowers RLIMIT_NOFILE (soft and hard) to `LIMIT`, then runs the gateway as `python -m gateway`
would, so that a test sees how the real server behaves when descriptors run low."""

from __future__ import annotations

import resource
import runpy

LIMIT = 256

if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))
    runpy.run_module("gateway", run_name="__main__", alter_sys=True)

"""schemathesis fuzzes every operation of `/openapi.json` against a running gateway and
processor: no answer may be a 5xx, and none may hang (every request has a timeout, the whole
run a bound)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import auth
from tests.support.cluster import Pair, wait_http

MAX_EXAMPLES = 100  # per operation and phase: the run stays well under a minute
REQUEST_TIMEOUT = 5.0  # seconds: a request that takes longer counts as a hang and fails the run
RUN_TIMEOUT = 240.0
# A valid WatchWorkflows request is an endless stream by design (a list, then live changes): it
# would count as a hang. Its refusals are tested where it is (tests/integration/test_review.py).
ENDLESS = ("WatchWorkflows",)


def schemathesis_binary() -> str:
    found = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    if not Path(found).exists():
        pytest.fail("schemathesis is not installed: pip install schemathesis")
    return found


@pytest.mark.timeout(300)
@pytest.mark.parametrize("credentials", ["with a token", "without credentials"])
def test_openapi_fuzzing_finds_no_server_error_and_no_hang(pair: Pair, tmp_path: Path, credentials: str) -> None:
    base = f"http://127.0.0.1:{pair.gateway.rest_port}"
    wait_http(f"{base}/openapi.json")
    header = ["--header", f"Authorization: Bearer {auth.jwt_for('fuzzer')}"] if credentials == "with a token" else []
    command = [
        schemathesis_binary(),
        "run",
        f"{base}/openapi.json",
        "--url",
        base,
        "--checks",
        "not_a_server_error",
        "--phases",
        "examples,coverage,fuzzing",  # not stateful: a valid id would open an endless status stream
        "--max-examples",
        str(MAX_EXAMPLES),
        "--request-timeout",
        str(REQUEST_TIMEOUT),
        "--seed",
        "4",
        "--generation-deterministic",
        "--suppress-health-check",
        "all",
        *(option for operation in ENDLESS for option in ("--exclude-operation-id", operation)),
        *header,
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path / "schemathesis"),
    ]
    started = time.monotonic()
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        cwd=tmp_path,  # hypothesis keeps its example database in the working directory
        env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    elapsed = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{output}\ngateway log:\n{pair.gateway.log()}"
    assert "Tested: 15" in output and " passed" in output, output
    assert elapsed < RUN_TIMEOUT

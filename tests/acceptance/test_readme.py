"""The README's grpcurl block works as printed, against a running pair."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support import auth
from tests.support.cluster import ROOT, Pair


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- grpcurl-example:start -->\n```sh\n(.*?)```\n<!-- grpcurl-example:end -->", text, re.S)
    assert found, "the README lost its grpcurl example block"
    return found.group(1)


def test_the_readme_grpcurl_example_runs_as_printed(pair: Pair, tmp_path: Path) -> None:
    # The demo's credentials files, for the test pair's principals (JWTs of the test issuer).
    (tmp_path / "submitter.token").write_text(auth.jwt_for("carol") + "\n")
    (tmp_path / "approver.token").write_text(auth.jwt_for("alice") + "\n")
    env = {
        **os.environ,
        "GATEWAY": pair.gateway.target,
        "CREDENTIALS": str(tmp_path),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", readme_block()],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "auditflow.v1.WorkflowService" in out
    assert '"status": "SERVING"' in out
    assert '"principal": "alice"' in out
    assert '"approved": true' in out
    assert "EVENT_TYPE_COMPLETED" in out
    assert '"is_completed": true' in out

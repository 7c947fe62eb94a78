"""The compose stack on a real Docker engine, end to end (`python3 tasks.py compose-check`).

In a scratch copy of the tracked files (what a fresh clone holds), as the README says:
`auditflow secrets`, the chown, `up -d --build`; then it submits a plan on one gateway and
approves it on the other, kills a processor (`docker kill`) and checks that every plan
approved around the kill completes, creates a token while the stack runs and times how long
until a gateway accepts it, and takes everything down (volumes included). It prints the
figures docs/deploy.md records: build context size, image size, time from `up` to every
service healthy, token rotation delay.

Needs a Docker engine (DOCKER_HOST is honoured), `docker compose` or `docker-compose`, and
the base images the Dockerfile and docker-compose.yml name (`deploy/base-images/build.sh`
builds them locally from Debian's packages). Takes a few minutes; not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "auditflow"
SERVICE_UID = 10001  # the image's user (Dockerfile)
PROJECT = "auditflow-check"
GATEWAYS = ("127.0.0.1:50051", "127.0.0.1:50052")  # one published port per gateway replica
PLANS_AROUND_THE_KILL = 6


class CheckFailed(Exception):
    pass


def compose_program() -> list[str]:
    """`docker compose` (the plugin) when it answers, else `docker-compose`."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise CheckFailed("neither `docker compose` nor `docker-compose` is installed")


def run(command: Sequence[str | Path], cwd: Path, *, check: bool = True, timeout: float = 900) -> str:
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        shown = " ".join(map(str, command))
        raise CheckFailed(f"{shown} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


def scratch_checkout(into: Path) -> None:
    """The tracked files of this checkout (a fresh clone's content), without .git."""
    listed = run(["git", "ls-files", "-z"], ROOT).split("\0")
    for name in filter(None, listed):
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)


def cli(workdir: Path, target: str, token: Path, *args: str) -> str:
    return run([CLI, "--target", target, "--plaintext", "--token-file", token, "--json", *args], workdir, timeout=180)


def wait_until(what: str, probe: Callable[[], bool], timeout: float) -> float:
    """Seconds until `probe()` is true (polled every 0.2 s); CheckFailed after `timeout`."""
    started = time.monotonic()
    while not probe():
        if time.monotonic() - started > timeout:
            raise CheckFailed(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - started


class Stack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.compose = [*compose_program(), "-p", PROJECT]

    def __call__(self, *args: str, check: bool = True) -> str:
        return run([*self.compose, *args], self.workdir, check=check)

    def containers(self, service: str) -> list[str]:
        return self("ps", "-q", service).split()

    def healthy(self) -> bool:
        ids = [c for service in ("postgres", "processor", "gateway") for c in self.containers(service)]
        if len(ids) < 5:
            return False
        states = run(["docker", "inspect", "--format", "{{.State.Health.Status}}", *ids], self.workdir, check=False)
        return states.split() == ["healthy"] * len(ids)


def secrets_as_documented(workdir: Path) -> Path:
    """`auditflow secrets ./secrets`, then the chown of docs/deploy.md (all but the operator's token)."""
    secrets = workdir / "secrets"
    run([CLI, "secrets", secrets], workdir)
    for path in [secrets, *secrets.rglob("*")]:
        if path.name != "operator.token":
            os.chown(path, SERVICE_UID, SERVICE_UID)
    return secrets


def context_bytes(build_log: str) -> int | None:
    """The build context's size as the classic builder reports it."""
    found = re.search(r"Sending build context to Docker daemon\s+([\d.]+)([kMG]?B)", build_log)
    if found is None:
        return None
    scale = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[found.group(2)]
    return int(float(found.group(1)) * scale)


def new_token(workdir: Path, secrets: Path, person: str, role: str) -> Path:
    token = run([CLI, "token", "create", person, "--principal", person, "--role", role,
                 "--tokens-file", secrets / "tokens" / "gateway-tokens.toml"], workdir)  # fmt: skip
    path = workdir / f"{person}.token"
    path.write_text(token)
    path.chmod(0o600)
    return path


def accepted(workdir: Path, token: Path) -> bool:
    try:
        return bool(json.loads(cli(workdir, GATEWAYS[0], token, "whoami"))["principal"] == token.stem)
    except CheckFailed:
        return False


def submit_and_approve(workdir: Path, submitter: Path, approver: Path) -> str:
    """Submit on one gateway, approve on the other; the workflow id."""
    plan = workdir / "plan.json"
    plan.write_text(json.dumps([{"procedure": "ledger_summary", "parameters": {"path": "ledger.csv"}}]))
    submitted = json.loads(cli(workdir, GATEWAYS[0], submitter, "submit", "--plan", str(plan), "--title", "check"))
    workflow_id = str(submitted["workflow_id"])
    cli(workdir, GATEWAYS[1], approver, "approve", workflow_id, "--etag", str(submitted["etag"]), "--yes")
    return workflow_id


def check(workdir: Path, figures: dict[str, float | int | None]) -> None:
    stack = Stack(workdir)
    secrets = secrets_as_documented(workdir)
    build = run(["docker", "build", "-t", "auditflow:local", "."], workdir, timeout=1800)
    figures["context_bytes"] = context_bytes(build)
    size = run(["docker", "image", "inspect", "auditflow:local", "--format", "{{.Size}}"], workdir)
    figures["image_bytes"] = int(size.strip())
    started = time.monotonic()
    stack("up", "-d")
    wait_until("every service healthy", stack.healthy, 300)
    figures["healthy_seconds"] = round(time.monotonic() - started, 1)  # (from `up`, the image built)
    operator = secrets / "operator.token"
    if json.loads(cli(workdir, GATEWAYS[0], operator, "whoami"))["principal"] != "operator":
        raise CheckFailed("the operator's token is not accepted")
    submitter = new_token(workdir, secrets, "sam", "submitter")
    created = time.monotonic()
    approver = new_token(workdir, secrets, "ada", "approver")
    wait_until("the new tokens accepted", lambda: accepted(workdir, submitter) and accepted(workdir, approver), 60)
    figures["token_rotation_seconds"] = round(time.monotonic() - created, 1)
    first = submit_and_approve(workdir, submitter, approver)
    cli(workdir, GATEWAYS[0], approver, "watch", first)  # (on the gateway it was submitted to)
    processors = stack.containers("processor")
    workflows = [submit_and_approve(workdir, submitter, approver) for _ in range(PLANS_AROUND_THE_KILL // 2)]
    run(["docker", "kill", processors[0]], workdir)
    workflows += [submit_and_approve(workdir, submitter, approver) for _ in range(PLANS_AROUND_THE_KILL // 2)]
    for workflow_id in workflows:  # `watch` exits 0 only on COMPLETED
        cli(workdir, GATEWAYS[0], approver, "watch", workflow_id)
        verified = json.loads(cli(workdir, GATEWAYS[1], approver, "verify", workflow_id))
        if not (verified["intact"] and verified["signed"] and verified["signature_checked"]):
            raise CheckFailed(f"the trail of {workflow_id} does not verify: {verified}")
    figures["completed_around_the_kill"] = len(workflows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave the scratch directory (its path is printed)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="auditflow-compose-"))
    figures: dict[str, float | int | None] = {}
    code = 0
    try:
        scratch_checkout(workdir)
        check(workdir, figures)
        print("compose-check passed")
    except (CheckFailed, subprocess.TimeoutExpired) as exc:
        print(f"compose-check FAILED: {exc}", file=sys.stderr)
        code = 1
    finally:
        if code:
            print(Stack(workdir)("logs", "--no-color", "--tail", "40", check=False), file=sys.stderr)
        Stack(workdir)("down", "-v", "--remove-orphans", check=False)
        print(json.dumps(figures, indent=2))
        if args.keep:
            print(f"scratch directory: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

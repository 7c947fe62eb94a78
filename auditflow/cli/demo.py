"""`auditflow demo`: start a processor and a gateway, run the sample plan end to end, stop.

The servers run as subprocesses (`python -m processor`, `python -m gateway`) with SQLite
databases and log files under --data-dir, and with authentication on: the demo makes fresh
credentials for every run in `<data-dir>/credentials/` (tokens files holding only hashes, and
one token file per principal, mode 0600): a submitter, an approver, a viewer, and the
gateway's service token for the processor, and an Ed25519 key the processor signs the end of
each run's trail with. It prints how to use them with the CLI, grpcurl and curl, pointing at
those files; no token is printed. The approval carries the etag of the plan it was shown, and
the demo ends by verifying the run's trail. The servers are always stopped with
SIGTERM, also on Ctrl-C or failure (SIGKILL only if one does not stop within the grace period).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auditflow import sample, trail
from auditflow.auth.tokens import append_entry
from auditflow.cli import commands, render
from auditflow.cli.client import CliError, format_rpc_error, open_channel, read_token, workflow_stub
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as api

LOG_TAIL_LINES = 20
STOP_GRACE_SECONDS = 15.0


def say(text: str) -> None:
    print(render.printable(text), flush=True)


def warn(text: str) -> None:
    sys.stdout.flush()
    print(render.printable(text), file=sys.stderr, flush=True)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (bind to port 0 and ask the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) if kept else "(empty)"


@dataclass
class Server:
    """One server subprocess and its log file."""

    name: str
    module: str
    port: int
    args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    failure_reported: bool = False
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._log = self.log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", self.module, "--host", "127.0.0.1", "--port", str(self.port), *self.args]
        # A session of its own: Ctrl-C in the terminal reaches only us, and we stop the
        # servers in order with SIGTERM.
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> int | None:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL. Returns the exit code."""
        code: int | None = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(grace)
                except subprocess.TimeoutExpired:
                    warn(f"demo: {self.name} did not stop within {grace:.0f} s; killing it")
                    self.process.kill()
                    self.process.wait()
            code = self.process.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def describe_logs(self) -> str:
        return f"--- last lines of {self.log_path} ---\n{tail(self.log_path)}"


def is_serving(target: str, timeout: float = 1.0) -> bool:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def wait_until_serving(servers: list[Server], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(servers)
    while pending:
        for server in list(pending):
            code = server.exited()
            if code is not None:
                server.failure_reported = True
                logs = server.describe_logs()
                raise CliError(f"{server.name} exited with code {code} while starting\n{logs}")
            if is_serving(server.target):
                say(f"{server.name} is serving on {server.target}")
                pending.remove(server)
        if not pending:
            return
        if time.monotonic() > deadline:
            logs = "\n".join(s.describe_logs() for s in pending)
            names = " and ".join(s.name for s in pending)
            raise CliError(f"{names} not SERVING after {timeout:.0f} s (grpc.health.v1 Health/Check)\n{logs}")
        time.sleep(0.2)


class Terminated(Exception):
    """SIGTERM arrived: stop like on Ctrl-C."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass(frozen=True)
class Credentials:
    """What `make_credentials` wrote: the servers' tokens files and each principal's token file."""

    directory: Path
    gateway_tokens: Path
    processor_tokens: Path
    link_token: Path
    tokens: dict[str, Path]  # role in the demo ("submitter", "approver", "viewer") -> token file
    trail_key: Path  # Ed25519 key the processor signs the end of each run's trail with
    trail_public_key: Path  # its public half, which the gateway checks signatures with


def make_credentials(directory: Path, submitter: str, approver: str) -> Credentials:
    """Fresh tokens for this run (the previous run's stop working)."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    gateway_tokens, processor_tokens = directory / "gateway-tokens.toml", directory / "processor-tokens.toml"
    for old in (gateway_tokens, processor_tokens):
        old.unlink(missing_ok=True)
    people = {
        "submitter": (submitter, ["submitter"]),
        "approver": (approver, ["approver"]),
        "viewer": ("demo-viewer", ["viewer"]),
    }
    files = {}
    for role, (name, roles) in people.items():
        files[role] = _write_secret(directory / f"{role}.token", append_entry(gateway_tokens, name, name, roles))
    link = append_entry(processor_tokens, "gateway", "auditflow-gateway", ["gateway"])
    link_token = _write_secret(directory / "gateway-to-processor.token", link)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    trail_key = _write_secret(directory / "trail-signing.pem", pem.decode().strip())
    public = directory / "trail-signing.pub"
    public.write_bytes(trail.public_pem(key.public_key()))
    return Credentials(directory, gateway_tokens, processor_tokens, link_token, files, trail_key, public)


def _write_secret(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    return path


def usage(credentials: Credentials, gateway: str, rest_port: int) -> str:
    """How to call the running demo as each principal (token files, never tokens)."""
    here = Path.cwd()

    def shown(path: Path) -> str:
        return str(path.relative_to(here)) if path.is_relative_to(here) else str(path)

    def program(name: str) -> str:
        """The command as this shell finds it: by name on PATH, else beside our interpreter."""
        beside = Path(sys.executable).parent / name
        return name if shutil.which(name) or not beside.exists() else shown(beside)

    approver = shown(credentials.tokens["approver"])
    return "\n".join(
        [
            f"== credentials for this run in {shown(credentials.directory)}/ (submitter.token, approver.token, "
            "viewer.token; only their hashes are in the servers' tokens files)",
            f"   CLI:     {program('auditflow')} --target {gateway} --token-file {approver} whoami",
            f'   grpcurl: {program("grpcurl")} -plaintext -H "authorization: Bearer $(cat {approver})" '
            f"{gateway} auditflow.v1.WorkflowService/WhoAmI",
            f'   curl:    curl -H "Authorization: Bearer $(cat {approver})" http://127.0.0.1:{rest_port}/whoami',
            f"   page:    http://127.0.0.1:{rest_port}/ (sign in with the content of a token file)",
        ]
    )


def run(args: argparse.Namespace) -> int:
    if args.submitter == args.approver:
        raise CliError("--submitter and --approver must differ (the creator of a plan may not approve it)")
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    credentials = make_credentials(data_dir / "credentials", args.submitter, args.approver)
    processor_port = args.processor_port or free_port()
    gateway_port = args.gateway_port or free_port()
    rest_port = args.rest_port or free_port()
    processor = Server(
        "processor",
        "processor",
        processor_port,
        [
            "--database-url",
            f"sqlite:///{data_dir / 'processor.db'}",
            "--tokens-file",
            str(credentials.processor_tokens),
            "--trail-signing-key",
            str(credentials.trail_key),
        ],
        data_dir / "processor.log",
    )
    gateway = Server(
        "gateway",
        "gateway",
        gateway_port,
        [
            "--database-url",
            f"sqlite:///{data_dir / 'gateway.db'}",
            "--processor-target",
            processor.target,
            "--rest-port",
            str(rest_port),
            "--tokens-file",
            str(credentials.gateway_tokens),
            "--processor-token-file",
            str(credentials.link_token),
            "--trail-public-keys",
            str(credentials.trail_public_key),
        ],
        data_dir / "gateway.log",
    )
    servers = [gateway, processor]  # stop order: the gateway first, so its relay stops calling
    code = 1
    with sigterm_raises():
        try:
            say(f"== starting the processor and the gateway (databases and logs in {data_dir})")
            processor.start()
            gateway.start()
            wait_until_serving([processor, gateway], args.startup_timeout)
            say(f"REST API: http://127.0.0.1:{rest_port}/workflows (OpenAPI at /openapi.json)")
            say(usage(credentials, gateway.target, rest_port))
            code = _scenario(gateway, credentials, args)
            if args.keep_running:
                say("\n== the servers keep running; Ctrl-C stops them")
                say(usage(credentials, gateway.target, rest_port))
                while all(server.exited() is None for server in servers):
                    time.sleep(0.5)
        except (KeyboardInterrupt, Terminated):
            warn("\ndemo: interrupted")
            code = 130
        except grpc.RpcError as exc:
            warn(format_rpc_error(exc))
            warn(gateway.describe_logs())
            code = 2
        finally:
            for server in servers:
                stopped = server.stop()
                if stopped not in (None, 0, -signal.SIGTERM) and not server.failure_reported:
                    note = f"demo: {server.name} exited with code {stopped}; see {server.log_path}"
                    warn(note)
            say("== servers stopped")
    return code


def _scenario(gateway: Server, credentials: Credentials, args: argparse.Namespace) -> int:
    with open_channel(gateway.target) as channel:
        stub = workflow_stub(channel)
        submitter = commands.Context(stub=stub, token=read_token(str(credentials.tokens["submitter"])))
        approver = commands.Context(stub=stub, token=read_token(str(credentials.tokens["approver"])))

        request = api.CreateWorkflowRequest(
            title="Demo: sample ledger audit", plan=sample.sample_plan(), max_cycles=args.max_cycles
        )
        workflow = stub.CreateWorkflow(request, metadata=submitter.metadata).workflow
        say(f"\n== submitted {workflow.workflow_id} as {args.submitter} ({render.status_name(workflow.status)})")

        # The approver reads the plan first, and approves exactly the revision shown (its etag).
        shown = stub.GetWorkflow(api.GetWorkflowRequest(workflow_id=workflow.workflow_id), metadata=approver.metadata)
        say(f"\n== the plan as {args.approver} reviews it")
        say(render.review_text(shown.workflow))
        started = time.perf_counter()
        response = stub.Approve(
            api.ApproveRequest(
                workflow_id=workflow.workflow_id, comment="approved by the demo", etag=shown.workflow.etag
            ),
            metadata=approver.metadata,
        )
        latency_ms = (time.perf_counter() - started) * 1000
        say(f"\n== approved as {args.approver}: the answer came back at once")
        say(render.approve_summary(response, latency_ms))

        say("\n== watching the background run")
        snapshot = commands.watch_workflow(approver, workflow.workflow_id)
        get = api.GetWorkflowRequest(workflow_id=workflow.workflow_id)
        final = stub.GetWorkflow(get, metadata=approver.metadata)
        say(f"\n== {workflow.workflow_id} {render.status_name(snapshot.status)}")
        say(render.workflow_summary(final.workflow))
        commands.first_findings(approver, workflow.workflow_id, 5)
        completed = snapshot.status == pb.WorkflowStatus.WORKFLOW_STATUS_COMPLETED
        if not completed:
            warn(f"demo: the run did not complete: {commands.end_detail(snapshot)}")
            return 1
        say(f"\n== the trail of {workflow.workflow_id}, checked by the gateway and recomputed here")
        check = argparse.Namespace(workflow_id=workflow.workflow_id, public_key=[str(credentials.trail_public_key)])
        return commands.verify(approver, check)

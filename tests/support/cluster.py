"""Gateway and processor as real subprocesses, for tests where a process dies (SIGKILL) or an
external binary (grpcurl) talks to them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import auth, secrets
from tests.support.grpc_helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    """One `python -m gateway|processor` with fixed port and database, restartable."""

    def __init__(
        self, module: str, workdir: Path, args: list[str], log_level: str = "DEBUG", launcher: str | None = None
    ) -> None:
        self.module = module
        self.launcher = launcher or module  # the module `python -m` runs (a benchmark may wrap the server)
        self.log_level = log_level
        self.port = free_port()
        self.database = workdir / f"{module}.db"
        self.log_path = workdir / f"{module}.log"
        self.args = args
        # The gateway serves REST too: on a free port, never on the shared default 8080.
        self.rest_port = free_port() if module == "gateway" else None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.module} was not started"
        return self.proc.pid

    def start(self, wait: bool = True) -> ServerProcess:
        command = [
            sys.executable,
            "-m",
            self.launcher,
            "--port",
            str(self.port),
            "--database-url",
            f"sqlite:///{self.database}",
            "--plugin",
            "tests.support.procedures",
            "--log-level",
            self.log_level,
            *(["--rest-port", str(self.rest_port)] if self.rest_port is not None else []),
            *self.args,
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        if wait:
            self.wait_serving()
        return self

    def wait_serving(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.module} exited early:\n{self.log()}")
                try:
                    response = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        raise TimeoutError(f"{self.module} did not become SERVING:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        secrets.scan_file(self.log_path)  # the whole log, DEBUG included: no credential in it

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""


class Pair:
    """A processor and a gateway pointed at it."""

    def __init__(
        self,
        workdir: Path,
        processor_args: Sequence[str] = (),
        gateway_args: Sequence[str] = (),
        log_level: str = "DEBUG",
        gateway_launcher: str | None = None,
        principal_limits: bool = False,
    ) -> None:
        self.processor = ServerProcess("processor", workdir, [*auth.processor_args(), *processor_args], log_level)
        target = ["--processor-target", self.processor.target]
        gateway = [*target, *auth.gateway_args(principal_limits), *gateway_args]
        self.gateway = ServerProcess("gateway", workdir, gateway, log_level, launcher=gateway_launcher)

    def start(self) -> Pair:
        self.processor.start()
        self.gateway.start()
        return self

    def stop(self) -> None:
        self.gateway.stop()
        self.processor.stop()


def wait_http(url: str, timeout: float = 30.0) -> None:
    """Wait until an HTTP GET of `url` answers (any status below 500)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


@contextlib.contextmanager
def running_pair(workdir: Path, processor_args: Sequence[str] = ()) -> Iterator[Pair]:
    """Processor + gateway subprocesses (WARNING logs), REST answering, stopped afterwards;
    a gateway that fails to start does not leave its processor running."""
    workdir.mkdir(parents=True)
    pair = Pair(workdir, processor_args=processor_args, log_level="WARNING")
    try:
        pair.start()
        wait_http(f"http://127.0.0.1:{pair.gateway.rest_port}/openapi.json")
        yield pair
    finally:
        pair.stop()

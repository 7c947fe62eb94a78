"""The servers as an operator starts them: a port in use is one line and a non-zero exit (never
a second server beside the first); a bad setting likewise; SIGHUP swaps the TLS certificate
for new connections without a restart."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import auth
from tests.support.cluster import ROOT, ServerProcess
from tests.support.grpc_helpers import free_port
from tests.support.tls import CertificateAuthority

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def service_args(module: str, tmp_path: Path) -> list[str]:
    common = ["--database-url", f"sqlite:///{tmp_path / f'{module}-second.db'}"]
    if module == "gateway":
        return [*common, *auth.gateway_args(), "--rest-port", "0"]
    return [*common, *auth.processor_args()]


@pytest.mark.parametrize("module", ["gateway", "processor"])
def test_a_second_server_on_a_used_port_exits_with_one_line(tmp_path: Path, module: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run(module, "--port", str(port), *service_args(module, tmp_path))
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines == [f"auditflow-{module}: cannot listen on 127.0.0.1:{port}: the port is in use by another process"]


def test_a_used_rest_port_is_one_line_too(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run(
            "gateway",
            "--port",
            "0",
            *service_args("gateway", tmp_path)[:-2],
            "--rest-port",
            str(port),
            "--log-level",
            "ERROR",
        )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"auditflow-gateway: cannot listen on 127.0.0.1:{port}: the port is in use by another process"
    ]


@pytest.mark.parametrize("module", ["gateway", "processor"])
def test_the_metrics_port_is_loopback_unless_asked_and_a_used_one_is_one_line(tmp_path: Path, module: str) -> None:
    done = run(module, "--port", "0", *service_args(module, tmp_path), "--metrics-address", "0.0.0.0:0")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"auditflow-{module}: the metrics endpoint on 0.0.0.0 would be plaintext: configure TLS, use a loopback "
        "address, or pass --allow-plaintext on a network you trust"
    ]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run(
            module,
            "--port",
            "0",
            *service_args(module, tmp_path),
            "--metrics-address",
            f":{port}",
            "--log-level",
            "ERROR",
        )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"auditflow-{module}: cannot listen on 127.0.0.1:{port} (metrics): the port is in use by another process"
    ]


def test_a_running_server_keeps_its_port_and_a_second_one_exits(tmp_path: Path) -> None:
    first = ServerProcess("processor", tmp_path, auth.processor_args()).start()
    try:
        done = run("processor", "--port", str(first.port), *service_args("processor", tmp_path))
        assert done.returncode != 0 and "the port is in use" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        first.wait_serving(timeout=5)  # the first one is untouched
    finally:
        first.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tokens-file", "/nonexistent/tokens.toml"], "cannot read the tokens file /nonexistent/tokens.toml"),
        (["--host", "0.0.0.0"], "would be plaintext"),
        (["--data-root", "/nonexistent-root"], "--data-root /nonexistent-root: not a directory"),
        (["--jwks-file", str(auth.JWKS_FILE)], "JWT verification needs --jwt-issuer and --jwt-audience"),
    ],
)
def test_a_setting_that_cannot_work_is_one_line_and_exit_1(tmp_path: Path, args: list[str], message: str) -> None:
    done = run(
        "processor",
        "--port",
        "0",
        "--database-url",
        f"sqlite:///{tmp_path / 'p.db'}",
        *auth.processor_args()[:2],
        *args,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"auditflow-processor: {message}"] or message in done.stderr


def _served_serial(port: int, ca: Path, alpn: list[str]) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(alpn)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    from cryptography import x509

    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _wait_for_serial(port: int, ca: Path, alpn: list[str], serial: int, gateway: ServerProcess) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if _served_serial(port, ca, alpn) == serial:
                return
        except OSError:  # not listening yet
            pass
        assert time.monotonic() < deadline, gateway.log()
        time.sleep(0.1)


def test_sighup_swaps_the_certificate_for_new_connections(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    first = ca.issue("localhost", server=True, ips=("127.0.0.1",))
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes(first.cert.read_bytes())
    key.write_bytes(first.key.read_bytes())
    args = [*auth.gateway_args(), "--tls-cert", str(cert), "--tls-key", str(key)]
    gateway = ServerProcess("gateway", tmp_path, [*args, "--processor-target", f"127.0.0.1:{free_port()}"])
    assert gateway.rest_port is not None
    gateway.start(wait=False)
    try:
        for port, alpn in ((gateway.port, ["h2"]), (gateway.rest_port, ["http/1.1"])):
            _wait_for_serial(port, ca.ca_file, alpn, first.serial, gateway)
        second = ca.issue("localhost", server=True, ips=("127.0.0.1",))
        cert.write_bytes(second.cert.read_bytes())
        key.write_bytes(second.key.read_bytes())
        os.kill(gateway.pid, signal.SIGHUP)
        for port, alpn in ((gateway.port, ["h2"]), (gateway.rest_port, ["http/1.1"])):
            _wait_for_serial(port, ca.ca_file, alpn, second.serial, gateway)
        assert gateway.proc is not None and gateway.proc.poll() is None
    finally:
        gateway.stop()

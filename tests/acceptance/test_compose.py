"""docker-compose.yml cannot drift from the code: `docker-compose config` accepts it, and each
service's exact command line and environment from it run here against the local PostgreSQL
(a database per service and test run), with the secrets `auditflow secrets` writes.

No Docker engine runs here, so what only a container gives is mapped, and nothing else: the
database host and name (to the local server's throwaway databases), /run/secrets/NAME (to the
file the compose file names for that secret), the mounted secrets directories (to the same
directories of the secrets written here), /data (to a copy of ./ledgers) and the ports (to
free ones, since replicas of one image share them in containers but not here).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from tests.support.grpc_helpers import free_port
from tests.support.postgres import fresh_database

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
BIN = Path(sys.executable).parent


def compose_config() -> dict[str, Any]:
    """The compose file as `docker-compose config` resolves it (anchors, merges, paths)."""
    program = shutil.which("docker-compose")
    assert program, "docker-compose is missing: `python3 tasks.py test` installs Debian's docker-compose package"
    result = subprocess.run(
        [program, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


class Mapping:
    """What differs between a container and this machine, and only that."""

    def __init__(self, config: dict[str, Any], urls: dict[str, str], ledgers: Path, secrets_dir: Path) -> None:
        self.config = config
        self.urls = urls  # compose's database URL -> the test database's
        self.ledgers = ledgers
        self.mounts = secret_mounts(config, secrets_dir)  # a mounted secrets directory -> the one written here
        self.ports = {"50051": str(free_port()), "50052": str(free_port()), "8080": str(free_port())}
        self.metrics = {service: str(free_port()) for service in ("gateway", "processor")}  # 9464 in each container

    def value(self, text: str, service: str) -> str:
        for compose_url, url in self.urls.items():
            text = text.replace(compose_url, url)
        for name, secret in self.config["secrets"].items():
            text = text.replace(f"/run/secrets/{name}", secret["file"])
        for target, source in self.mounts.items():
            text = text.replace(target + "/", source + "/")
        if text == "/data":
            text = str(self.ledgers)
        if text == "dns:///processor:50052":
            text = f"127.0.0.1:{self.ports['50052']}"
        if text.startswith("127.0.0.1:") and text.split(":")[1] in self.ports:
            text = f"127.0.0.1:{self.ports[text.split(':')[1]]}"
        if text in self.ports and service in ("gateway", "processor"):
            text = self.ports[text]
        if text == "0.0.0.0:9464":
            text = f"127.0.0.1:{self.metrics[service]}"
        return text.replace("$$", "$")

    def environment(self, service: str) -> dict[str, str]:
        spec = self.config["services"][service]
        env = {key: self.value(str(value), service) for key, value in spec.get("environment", {}).items()}
        return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **env}

    def command(self, argv: list[str], service: str) -> list[str]:
        return [self.value(str(part), service) for part in argv]


def secret_mounts(config: dict[str, Any], secrets_dir: Path) -> dict[str, str]:
    """Each directory under ./secrets that a service mounts: its path in the container -> the
    same directory of the secrets written for this test (which `auditflow secrets` must write)."""
    found = {}
    for spec in config["services"].values():
        for volume in spec.get("volumes", []):
            source, target = volume.split(":")[:2]
            if Path(source).is_relative_to(ROOT / "secrets"):
                mounted = secrets_dir / Path(source).relative_to(ROOT / "secrets")
                assert mounted.is_dir(), f"`auditflow secrets` does not write {mounted}"
                found[target] = str(mounted)
    return found


@pytest.fixture
def compose(tmp_path: Path) -> Iterator[tuple[Mapping, Path]]:
    config = compose_config()
    secrets_dir = tmp_path / "secrets"
    result = subprocess.run([str(BIN / "auditflow"), "secrets", str(secrets_dir)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for secret in config["secrets"].values():  # the compose file's secrets are where `auditflow secrets` puts them
        assert Path(secret["file"]).parent == ROOT / "secrets"
        secret["file"] = str(secrets_dir / Path(secret["file"]).name)
        assert Path(secret["file"]).exists(), f"`auditflow secrets` does not write {secret['file']}"
    ledgers = tmp_path / "ledgers"
    shutil.copytree(ROOT / "ledgers", ledgers)  # the sample ledger the README's examples read
    with fresh_database("composegw") as gateway_url, fresh_database("composeproc") as processor_url:
        urls = {
            "postgresql+psycopg://auditflow@postgres:5432/auditflow_gateway": gateway_url,
            "postgresql+psycopg://auditflow@postgres:5432/auditflow_processor": processor_url,
        }
        yield Mapping(config, urls, ledgers, secrets_dir), secrets_dir


def healthy(mapping: Mapping, service: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Run the service's own health check command until it passes."""
    test = mapping.config["services"][service]["healthcheck"]["test"]
    assert test[0] == "CMD"
    command = mapping.command(test[1:], service)
    deadline = time.monotonic() + 60
    while subprocess.run(command, env=mapping.environment(service), capture_output=True).returncode != 0:
        assert process.poll() is None, f"{service} exited with {process.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"{service} never passed its health check:\n{log.read_text()}"
        time.sleep(0.2)


def test_the_compose_file_runs_as_written_on_postgresql(compose: tuple[Mapping, Path], tmp_path: Path) -> None:
    mapping, secrets_dir = compose
    services = mapping.config["services"]
    assert set(services) == {"postgres", "migrate", "processor", "gateway"}
    assert services["gateway"]["deploy"]["replicas"] == 2 and services["processor"]["deploy"]["replicas"] == 2
    assert services["gateway"]["depends_on"]["processor"]["condition"] == "service_healthy"
    assert services["processor"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    mounted = ("/run/secrets/", *(target + "/" for target in mapping.mounts))
    for name in ("gateway", "processor", "migrate"):  # secrets by files, never inline
        assert not any(
            "token" in str(v).lower() and not str(v).startswith(mounted)
            for k, v in services[name]["environment"].items()
            if "TOKEN" in k
        ), name

    command = mapping.command(services["migrate"]["command"], "migrate")
    migrate = subprocess.run(command, env=mapping.environment("migrate"), capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr

    processes = []
    try:
        for service in ("processor", "gateway"):
            log = tmp_path / f"{service}.log"
            with log.open("wb") as out:
                command = mapping.command(services[service]["command"], service)
                env = mapping.environment(service)
                process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
            processes.append(process)
            healthy(mapping, service, process, log)
        run_a_plan(mapping, secrets_dir, tmp_path)
        scraped = {service: metrics_of(mapping, service) for service in ("gateway", "processor")}
        assert 'auditflow_gateway_decisions_total{kind="approve",outcome="dispatched"} 1.0' in scraped["gateway"]
        assert 'auditflow_processor_runs{status="COMPLETED"} 1.0' in scraped["processor"]
        for service in ("gateway", "processor"):  # the logs are JSON, one object per line
            lines = (tmp_path / f"{service}.log").read_text().splitlines()
            assert lines and all(json.loads(line)["service"] == service for line in lines if line.strip())
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


def metrics_of(mapping: Mapping, service: str) -> str:
    url = f"http://127.0.0.1:{mapping.metrics[service]}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def accepted(mapping: Mapping, token: Path) -> None:
    """Wait until the gateway accepts a token just added to its tokens file."""
    deadline = time.monotonic() + 30
    while True:
        try:
            cli(mapping, "whoami", token=token)
            return
        except AssertionError:
            assert time.monotonic() < deadline, f"the new token {token.name} was not picked up"
            time.sleep(0.5)


def cli(mapping: Mapping, *args: str, token: Path | None = None) -> str:
    target = f"127.0.0.1:{mapping.ports['50051']}"
    command = [
        str(BIN / "auditflow"),
        "--target",
        target,
        "--json",
        *(["--token-file", str(token)] if token else []),
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def run_a_plan(mapping: Mapping, secrets_dir: Path, tmp_path: Path) -> None:
    """The operator's token works; people get tokens; a plan over /data runs, signed."""
    me = json.loads(cli(mapping, "whoami", token=secrets_dir / "operator.token"))
    assert me["principal"] == "operator" and me["roles"] == ["admin"]
    tokens = {}
    for person, role in (("sam", "submitter"), ("ada", "approver")):
        result = subprocess.run(
            [
                str(BIN / "auditflow"),
                "token",
                "create",
                person,
                "--principal",
                person,
                "--role",
                role,
                "--tokens-file",
                str(secrets_dir / "tokens" / "gateway-tokens.toml"),
            ],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        tokens[person] = tmp_path / f"{person}.token"
        tokens[person].write_text(result.stdout)
    plan = tmp_path / "plan.json"
    ledger = str(mapping.ledgers / "ledger.csv")  # /data/ledger.csv in a container
    plan.write_text(json.dumps([{"procedure": "ledger_summary", "parameters": {"path": ledger}}]))
    for person in tokens:  # the gateway reloads its tokens file within seconds: wait for both
        accepted(mapping, tokens[person])
    submitted = json.loads(cli(mapping, "submit", "--plan", str(plan), "--title", "compose", token=tokens["sam"]))
    workflow_id = submitted["workflow_id"]
    cli(mapping, "approve", workflow_id, "--etag", submitted["etag"], "--yes", token=tokens["ada"])
    cli(mapping, "watch", workflow_id, token=tokens["ada"])
    verified = json.loads(cli(mapping, "verify", workflow_id, token=tokens["ada"]))
    assert verified["intact"] and verified["signed"] and verified["signature_checked"], verified

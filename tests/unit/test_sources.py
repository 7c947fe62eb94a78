"""Where a plan may read ledgers from: files under the data roots only (resolved, no `..`, no
link out, regular files, a size limit), databases only by name. Refusals outside the roots
say the same for a file that exists and one that does not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from auditflow import sources
from auditflow.config import ConfigError
from auditflow.procedures import load
from auditflow.procedures.table import check_source

LEDGER = "entry_id,posting_date,vendor,account,amount,currency,description,created_by,approved_by\n"


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "ledger.csv").write_text(LEDGER + "JE-1,2026-01-05,Acme,6100,10.10,EUR,x,alice,bob\n")
    (data / "books").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text(LEDGER)
    (data / "escape.csv").symlink_to(outside / "secret.csv")
    (data / "inside-link.csv").symlink_to(data / "ledger.csv")
    settings = sources.DataSettings(
        roots=(str(data),), sources=(("books", "sqlite:///unused.db"),), max_ledger_bytes=1024
    )
    monkeypatch.setattr(sources, "_current", sources.UNCONFINED)
    sources.configure(settings)
    return data


def refusal(given: str) -> str:
    with pytest.raises(sources.Refused) as refused:
        sources.current().file(given)
    return str(refused.value)


def test_files_under_a_root_are_found_by_absolute_or_relative_path(root: Path) -> None:
    assert sources.current().file(str(root / "ledger.csv")) == root / "ledger.csv"
    assert sources.current().file("ledger.csv") == root / "ledger.csv"
    assert sources.current().file("inside-link.csv") == root / "ledger.csv"  # a link within the root


def test_outside_the_roots_nothing_is_revealed(root: Path, tmp_path: Path) -> None:
    exists = refusal(str(tmp_path / "outside" / "secret.csv"))
    missing = refusal(str(tmp_path / "outside" / "nothing-here.csv"))
    assert exists.replace("secret.csv", "X") == missing.replace("nothing-here.csv", "X")
    assert "not under a data root" in exists
    for path in ("/etc/passwd", "/etc/shadow", "/proc/self/environ", os.path.expanduser("~/.ssh/id_rsa")):
        assert "not under a data root" in refusal(path)
    assert "not under a data root" in refusal(str(root / "escape.csv"))  # a link out of the root
    assert "'..' is not allowed" in refusal("../outside/secret.csv")
    assert "'..' is not allowed" in refusal(str(root / ".." / "outside" / "secret.csv"))


def test_inside_the_roots_only_regular_files_within_the_limit(root: Path) -> None:
    assert "is a directory" in refusal("books")
    assert "no such file" in refusal("missing.csv")
    (root / "big.csv").write_text("x" * 2048)
    assert "at most 1024 bytes" in refusal("big.csv")
    os.mkfifo(root / "pipe.csv")
    assert "not a regular file" in refusal("pipe.csv")


def test_devices_are_refused_even_under_a_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "_current", sources.UNCONFINED)
    sources.configure(sources.DataSettings(roots=("/dev",)))
    assert "not a regular file" in refusal("/dev/zero")
    assert "is a directory" in refusal("/dev/shm") or "not a regular file" in refusal("/dev/shm")


def test_a_plan_names_a_database_never_gives_its_url(root: Path) -> None:
    assert sources.current().url("books") == "sqlite:///unused.db"
    with pytest.raises(sources.Refused, match=r"no data source named 'ledgers' \(known: books\)"):
        sources.current().url("ledgers")
    [violation] = check_source({"url": "postgresql://admin@10.0.0.1/prod", "table": "t"})
    assert violation.field == "parameters.url" and "10.0.0.1" not in violation.description


def test_every_procedure_applies_the_same_rules_at_create(root: Path, tmp_path: Path) -> None:
    for name in ("ledger_summary", "vendor_totals", "duplicate_payments", "outliers"):
        procedure = load().get(name)
        assert procedure is not None and procedure.validate is not None
        assert list(procedure.validate({"path": "ledger.csv"})) == [], name
        [violation] = [v for v in procedure.validate({"path": "/etc/passwd"}) if v.field == "parameters.path"]
        assert "not under a data root" in violation.description, name


def test_roots_and_sources_are_checked_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "_current", sources.UNCONFINED)
    with pytest.raises(ConfigError, match="not a directory"):
        sources.configure(sources.DataSettings(roots=(str(tmp_path / "nope"),)))
    secret = tmp_path / "url.txt"
    secret.write_text("sqlite:///books.db\n")
    access = sources.configure(sources.DataSettings(roots=(str(tmp_path),), sources=(("books", f"@{secret}"),)))
    assert access.url("books") == "sqlite:///books.db"
    default = sources.configure(sources.DataSettings())
    assert default.roots == (sources.samples_dir(),)

"""Flags take their defaults from AUDITFLOW_<SERVICE>_* variables; flags win."""

from __future__ import annotations

import pytest

from gateway.settings import parse as parse_args
from processor.settings import parse


def test_environment_gives_defaults_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDITFLOW_GATEWAY_PORT", "6001")
    monkeypatch.setenv("AUDITFLOW_PROCESSOR_PORT", "6002")
    monkeypatch.setenv("AUDITFLOW_PROCESSOR_MAX_CONCURRENT", "5")
    monkeypatch.setenv("AUDITFLOW_GATEWAY_ALLOW_SELF_APPROVAL", "yes")
    gateway = parse_args([])
    assert (gateway.port, gateway.allow_self_approval) == (6001, True)
    assert parse_args(["--port", "7001"]).port == 7001
    processor = parse([])
    assert (processor.port, processor.max_concurrent) == (6002, 5)


def test_a_flags_other_name_and_its_variable_work_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """--replica-poll-interval is also --collection-poll-interval (its variable too), so that
    configurations that use that name keep working; the flag's own name wins."""
    assert parse_args(["--collection-poll-interval", "0.7"]).replica_poll_interval == 0.7
    monkeypatch.setenv("AUDITFLOW_GATEWAY_COLLECTION_POLL_INTERVAL", "0.3")
    assert parse_args([]).replica_poll_interval == 0.3
    monkeypatch.setenv("AUDITFLOW_GATEWAY_REPLICA_POLL_INTERVAL", "0.4")
    assert parse_args([]).replica_poll_interval == 0.4
    assert parse_args(["--replica-poll-interval", "0.9"]).replica_poll_interval == 0.9


def test_a_bad_environment_value_is_a_clear_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AUDITFLOW_PROCESSOR_MAX_CONCURRENT", "many")
    with pytest.raises(SystemExit) as exited:
        parse([])
    assert exited.value.code == 2
    assert "AUDITFLOW_PROCESSOR_MAX_CONCURRENT='many'" in capsys.readouterr().err


def test_a_bad_flag_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["--max-concurrent", "0"])
    assert "--max-concurrent" in capsys.readouterr().err


def test_an_interval_of_zero_is_refused_by_both_servers(capsys: pytest.CaptureFixture[str]) -> None:
    """A heartbeat every 0 s would make every idle stream spin."""
    for parse_one in (parse_args, parse):
        with pytest.raises(SystemExit):
            parse_one(["--heartbeat-interval", "0"])
        assert "--heartbeat-interval" in capsys.readouterr().err
    assert parse_args(["--heartbeat-interval", "0.5"]).heartbeat_interval == 0.5


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--log-format", "yaml", "expected text or json"),
        ("--log-level", "LOUD", "expected DEBUG, INFO, WARNING or ERROR"),
        ("--metrics-address", "9464", "expected HOST:PORT"),
        ("--metrics-address", "0.0.0.0:99999", "expected HOST:PORT"),
        ("--listen", "maybe", "expected true or false"),
    ],
)
def test_observability_flags_refuse_what_they_cannot_use(
    flag: str, value: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse([flag, value])
    assert exited.value.code == 2
    assert expected in capsys.readouterr().err


def test_observability_flags_and_their_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDITFLOW_GATEWAY_LOG_FORMAT", "JSON")
    monkeypatch.setenv("AUDITFLOW_PROCESSOR_METRICS_ADDRESS", "0.0.0.0:9464")
    monkeypatch.setenv("AUDITFLOW_PROCESSOR_LISTEN", "false")
    gateway = parse_args([])
    assert (gateway.log_format, gateway.metrics_address) == ("json", "")
    processor = parse(["--log-level", "debug"])
    assert (processor.metrics_address, processor.log_level, processor.listen) == ("0.0.0.0:9464", "DEBUG", False)

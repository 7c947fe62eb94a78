"""Which traces are recorded: the sampler the OTEL_TRACES_SAMPLER* variables choose."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import Decision, Sampler
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from auditflow import tracing
from auditflow.config import ConfigError

TRACES = range(1, 20_001)


def _recorded(sampler: Sampler, parent: object = None) -> int:
    """How many of 20,000 root calls (or children of `parent`) the sampler records."""
    context = None if parent is None else trace.set_span_in_context(parent)  # type: ignore[arg-type]
    decisions = (
        sampler.should_sample(context, trace_id * 0x9E3779B97F4A7C15 % 2**128, "call").decision for trace_id in TRACES
    )
    return sum(decision == Decision.RECORD_AND_SAMPLE for decision in decisions)


def _parent(sampled: bool) -> NonRecordingSpan:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    return NonRecordingSpan(SpanContext(7, 11, is_remote=True, trace_flags=flags))


def test_by_default_a_tenth_of_the_roots_and_every_child_follows_its_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG", raising=False)
    sampler = tracing.sampler_from_environment()
    assert sampler is not None
    assert 1_700 <= _recorded(sampler) <= 2_300  # 10 % of 20,000
    assert _recorded(sampler, _parent(sampled=True)) == len(TRACES)  # a traced approval's cycles
    assert _recorded(sampler, _parent(sampled=False)) == 0


def test_the_ratio_comes_from_otel_traces_sampler_arg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "1")
    sampler = tracing.sampler_from_environment()
    assert sampler is not None and _recorded(sampler) == len(TRACES)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    sampler = tracing.sampler_from_environment()
    assert sampler is not None and _recorded(sampler) == 0


@pytest.mark.parametrize("ratio", ["1.5", "-0.1", "tenth", "nan"])
def test_a_ratio_outside_0_to_1_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch, ratio: str) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", ratio)
    with pytest.raises(ConfigError, match=r"OTEL_TRACES_SAMPLER_ARG.*from 0 to 1"):
        tracing.sampler_from_environment()


def test_a_named_sampler_is_left_to_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    assert tracing.sampler_from_environment() is None

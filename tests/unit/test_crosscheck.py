"""Which watched workflows the crosscheck seeds: rows ahead of the hub at two looks in a row."""

from __future__ import annotations

from gateway.crosscheck import settled

A, B, C, D = "wf_a", "wf_b", "wf_c", "wf_d"


def test_a_row_ahead_at_one_look_only_is_left_to_the_replicas_own_publish() -> None:
    # This replica's feed or decision committed it and is about to publish it.
    assert settled({}, {A: 5}, {A: 4}) == {}


def test_a_row_ahead_at_two_looks_is_seeded_with_the_lower_position() -> None:
    # B: another replica committed 5 and then 7; the hub still holds 4: seed 5 (the fill reads on).
    # C: the hub caught up with the first look's position since: nothing to do.
    # D: ahead now, not before.
    before = {B: 5, C: 3}
    now = {B: 7, C: 6, D: 2}
    assert settled(before, now, {B: 4, C: 3, D: 1}) == {B: 5}
    assert settled(before, now, {B: 4, C: 2, D: 1}) == {B: 5, C: 3}


def test_nothing_is_seeded_when_the_hub_has_caught_up() -> None:
    assert settled({A: 5}, {A: 5}, {A: 5}) == {}

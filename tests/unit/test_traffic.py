"""A/B assignment, shadows and the traffic state, without Ray."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from scipy.stats import chisquare

from pixelfleet.serve.traffic import (
    AddedVariant,
    FamilyTraffic,
    TrafficState,
    load_state,
    newest,
    pick_variant,
    save_state,
    shadow_targets,
    validated,
)

CALLERS = [f"user-{i}" for i in range(4000)]


def test_sticky_assignment_is_stable_and_per_family():
    weights = {"a": 0.5, "b": 0.5}
    first = [pick_variant(weights, caller, "superres") for caller in CALLERS]
    again = [pick_variant(weights, caller, "superres") for caller in CALLERS]
    assert first == again
    other_family = [pick_variant(weights, caller, "ocr") for caller in CALLERS]
    assert first != other_family  # independent hashes per family


@pytest.mark.parametrize("weights", [{"a": 0.5, "b": 0.5}, {"a": 0.9, "b": 0.1}, {"a": 1, "b": 2, "c": 7}])
def test_sticky_shares_follow_the_weights(weights):
    counts = Counter(pick_variant(weights, caller, "superres") for caller in CALLERS)
    names = sorted(weights)
    total = sum(weights.values())
    expected = [len(CALLERS) * weights[n] / total for n in names]
    assert chisquare([counts[n] for n in names], expected).pvalue > 1e-3


def test_random_draws_follow_the_weights():
    rng = random.Random(7)
    counts = Counter(pick_variant({"a": 3, "b": 1}, None, "f", rng) for _ in range(4000))
    assert chisquare([counts["a"], counts["b"]], [3000, 1000]).pvalue > 1e-3


def test_raising_a_variant_moves_only_the_callers_it_takes():
    """0 -> 10%: about a tenth of the callers move, every one of them to the new variant."""
    before = {c: pick_variant({"old": 1.0, "new": 0.0}, c, "superres") for c in CALLERS}
    after = {c: pick_variant({"old": 0.9, "new": 0.1}, c, "superres") for c in CALLERS}
    moved = [c for c in CALLERS if before[c] != after[c]]
    assert all(after[c] == "new" for c in moved)
    assert 0.08 < len(moved) / len(CALLERS) < 0.12
    further = {c: pick_variant({"old": 0.5, "new": 0.5}, c, "superres") for c in CALLERS}
    assert all(further[c] == "new" for c in CALLERS if after[c] == "new")  # 10% -> 50%: nobody goes back


def test_zero_weights_never_serve_and_all_zero_is_an_error():
    assert {pick_variant({"a": 1, "b": 0}, c, "f") for c in CALLERS[:500]} == {"a"}
    with pytest.raises(ValueError):
        pick_variant({"a": 0}, "x", "f")


def test_shadow_targets_sample_their_fraction_and_skip_the_primary():
    rng = random.Random(3)
    hits = Counter(t for _ in range(4000) for t in shadow_targets({"s": 0.25, "p": 1.0}, "p", rng))
    assert hits["p"] == 0
    assert 900 < hits["s"] < 1100


def test_validation_names_the_problem():
    with pytest.raises(ValueError, match="unknown variant 'z'"):
        validated(FamilyTraffic(weights={"z": 1}), {"a"})
    with pytest.raises(ValueError, match="sum to more than 0"):
        validated(FamilyTraffic(weights={"a": 0}), {"a"})
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            validated(FamilyTraffic(weights={"a": bad, "b": 1.0}), {"a", "b"})
        with pytest.raises(ValueError, match="finite"):
            validated(FamilyTraffic(weights={"a": 1.0}, shadow={"b": bad}), {"a", "b"})


def test_state_round_trips_through_its_file_and_the_newest_revision_wins(tmp_path):
    path = str(tmp_path / "deep" / "state.json")
    assert load_state(path) is None
    state = TrafficState(
        revision=3,
        families={"superres": FamilyTraffic(weights={"a": 0.9, "b": 0.1}, shadow={"c": 0.5})},
        added={"superres": {"b": AddedVariant(config={"weights": "/m"}, app="pixelfleet-superres-b")}},
    )
    save_state(path, state)
    assert load_state(path) == state
    assert newest(None, TrafficState(revision=2), state) is state
    assert newest().revision == 0
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError):
        load_state(str(tmp_path / "bad.json"))

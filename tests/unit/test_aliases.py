"""Arm choice of split aliases (client/protocol/aliases.py): proportions, stickiness,
and a canary's weight rising moving units one way only."""

from __future__ import annotations

import random

import pytest

from inferis.client.protocol.aliases import AliasRoute, format_arms, is_alias_ref, parse_arms

UNITS = [f"user:{i}" for i in range(100_000)]


def route(spec: str, **kw: object) -> AliasRoute:
    return AliasRoute("production", tuple(parse_arms(spec)), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", ["1=9000,2=1000", "1=5000,2=5000", "1=6000,2=3000,3=1000"])
def test_split_proportions_within_one_point_over_100k_units(spec: str) -> None:
    r = route(spec)
    counts: dict[int, int] = {}
    for unit in UNITS:
        v = r.pick(unit)
        counts[v] = counts.get(v, 0) + 1
    for version, weight in parse_arms(spec):
        share = counts.get(version, 0) / len(UNITS)
        assert abs(share - weight / 10_000) <= 0.01, (version, share)


def test_the_same_unit_always_lands_on_the_same_arm() -> None:
    r = route("1=5000,2=5000")
    again = route("1=5000,2=5000")  # another worker, or the same one restarted
    assert all(r.pick(u) == again.pick(u) for u in UNITS[:5000])


def test_raising_the_canary_moves_units_only_from_control_to_canary() -> None:
    before = {u: route("1=9000,2=1000").pick(u) for u in UNITS[:20_000]}
    after = {u: route("1=7000,2=3000").pick(u) for u in UNITS[:20_000]}
    moved = [(before[u], after[u]) for u in before if before[u] != after[u]]
    assert moved and set(moved) == {(1, 2)}
    assert all(after[u] == 2 for u in before if before[u] == 2)


def test_without_a_unit_the_choice_is_random_by_weight() -> None:
    r = route("1=8000,2=2000")
    rng = random.Random(5)
    picks = [r.pick("", rng) for _ in range(20_000)]
    assert abs(picks.count(2) / len(picks) - 0.2) < 0.015


def test_shadow_share_and_versions() -> None:
    r = route("1=10000", shadow=3, shadow_ppm=250_000)
    share = sum(r.mirrors(u) for u in UNITS[:40_000]) / 40_000
    assert abs(share - 0.25) < 0.01
    assert r.versions() == {1, 3}
    assert not route("1=10000").mirrors("user:1")


def test_specs_and_refs() -> None:
    assert format_arms({3: 0.9, 4: 0.1}) == "3=9000,4=1000"
    assert format_arms({3: 1, 4: 2}) == "3=3333,4=6667"
    assert format_arms({1: 1, 2: 1, 3: 1}) == "1=3334,2=3333,3=3333"  # the control rounds
    assert is_alias_ref("production") and not is_alias_ref("3") and not is_alias_ref("latest")
    assert not is_alias_ref("")
    for bad in ({1: 0}, {1: -1, 2: 2}, {1: float("inf")}, {1: float("nan")}, {}):
        with pytest.raises(ValueError):
            format_arms(bad)
    with pytest.raises(LookupError):
        AliasRoute("x", ()).pick("u")

"""Image references and behaviour entries are typed by people; these pin the tricky inputs."""

from __future__ import annotations

import json
import math

import pytest

from canaryflow.runtime.behaviour import (
    DEFAULT_BEHAVIOUR,
    Behaviour,
    parse_behaviour,
    parse_configmap,
)
from canaryflow.simulator.discovery import parse_rps
from canaryflow_contracts.identifiers import version_of


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("shop:v2", "v2"),
        ("shop", "latest"),
        ("library/shop:1.4.0", "1.4.0"),
        ("registry.local:5000/team/shop:v3", "v3"),
        ("registry.local:5000/team/shop", "latest"),
        ("localhost:5000/shop", "latest"),
        ("shop:v2@sha256:" + "ab" * 32, "v2"),
        ("registry.local:5000/shop:v2@sha256:" + "cd" * 32, "v2"),
        ("registry.local:5000/shop@sha256:0123456789abcdef" + "0" * 48, "sha256-0123456789ab"),
        ("shop@sha256:" + "ef" * 32, "sha256-efefefefefef"),
        ("  shop:v9  ", "v9"),
        ("shop:", "latest"),
        ("", "latest"),
    ],
)
def test_version_of(image: str, version: str) -> None:
    assert version_of(image) == version


def test_defaults_when_keys_are_missing() -> None:
    behaviour, problems = parse_behaviour("{}")
    assert behaviour == DEFAULT_BEHAVIOUR
    assert problems == ()
    assert behaviour.error_rate == 0.005
    assert behaviour.conversion_rate == 0.05
    assert behaviour.median_s == pytest.approx(0.050)
    assert behaviour.p99_s == pytest.approx(0.150)
    assert behaviour.tail_probability == 0.0


def test_full_entry() -> None:
    raw = json.dumps(
        {
            "error_rate": 0.2,
            "conversion_rate": 0.01,
            "latency_ms": {
                "median": 80,
                "p99": 900,
                "tail": {"probability": 0.02, "multiplier": 8},
            },
        }
    )
    behaviour, problems = parse_behaviour(raw)
    assert problems == ()
    assert behaviour == Behaviour(
        error_rate=0.2,
        conversion_rate=0.01,
        median_s=0.08,
        p99_s=0.9,
        tail_probability=0.02,
        tail_multiplier=8.0,
    )
    assert behaviour.sigma == pytest.approx(math.log(900 / 80) / 2.3263, rel=1e-4)


def test_one_latency_figure_keeps_the_default_spread() -> None:
    slow, problems = parse_behaviour('{"latency_ms": {"median": 400}}')
    assert problems == ()
    assert (slow.median_s, slow.p99_s) == pytest.approx((0.4, 1.2))
    fast, problems = parse_behaviour('{"latency_ms": {"p99": 30}}')
    assert problems == ()
    assert (fast.median_s, fast.p99_s) == pytest.approx((0.010, 0.030))
    tail_only, _ = parse_behaviour('{"latency_ms": {"p99": 600}}')
    assert tail_only.median_s == pytest.approx(0.050)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"error_rate": 1.5}', "error_rate"),
        ('{"error_rate": "high"}', "error_rate"),
        ('{"error_rate": true}', "error_rate"),
        ('{"conversion_rate": -0.1}', "conversion_rate"),
        ('{"latency_ms": 50}', "latency_ms: expected an object"),
        ('{"latency_ms": {"median": 0}}', "latency_ms.median"),
        ('{"latency_ms": {"median": 100, "p99": 20}}', "below the median"),
        ('{"latency_ms": {"tail": {"probability": 2}}}', "tail.probability"),
        ('{"latency_ms": {"tail": {"multiplier": -3}}}', "tail.multiplier"),
        ('{"error-rate": 0.5}', "unknown key"),
        ('{"latency_ms": {"p95": 100}}', "latency_ms.p95: unknown key"),
        ('{"error_rate": NaN}', "error_rate"),
    ],
)
def test_bad_input_is_reported_and_never_raises(raw: str, fragment: str) -> None:
    behaviour, problems = parse_behaviour(raw)
    assert any(fragment in problem for problem in problems), problems
    assert 0.0 <= behaviour.error_rate <= 1.0
    assert 0.0 < behaviour.median_s <= behaviour.p99_s
    assert behaviour.sigma >= 0.0


def test_a_bad_field_keeps_the_good_ones() -> None:
    behaviour, problems = parse_behaviour('{"error_rate": 7, "conversion_rate": 0.2}')
    assert len(problems) == 1
    assert behaviour.error_rate == DEFAULT_BEHAVIOUR.error_rate
    assert behaviour.conversion_rate == 0.2


def test_p99_below_median_degenerates_to_a_constant() -> None:
    behaviour, _ = parse_behaviour('{"latency_ms": {"median": 100, "p99": 20}}')
    assert behaviour.p99_s == behaviour.median_s == pytest.approx(0.1)
    assert behaviour.sigma == 0.0


def test_configmap_maps_tags_and_collects_problems_per_key() -> None:
    behaviours, problems = parse_configmap({"v1": "{}", "v2": '{"error_rate": 0.3}', "v3": "{oops"})
    assert behaviours["v1"] == DEFAULT_BEHAVIOUR
    assert behaviours["v2"].error_rate == 0.3
    assert behaviours["v3"] == DEFAULT_BEHAVIOUR
    assert list(problems) == ["v3"]
    assert parse_configmap(None) == ({}, {})


@pytest.mark.parametrize(
    ("annotations", "rps", "bad"),
    [
        (None, 20.0, False),
        ({}, 20.0, False),
        ({"canaryflow.io/simulate-rps": "50"}, 50.0, False),
        ({"canaryflow.io/simulate-rps": "2.5"}, 2.5, False),
        ({"canaryflow.io/simulate-rps": "0"}, 0.0, False),
        ({"canaryflow.io/simulate-rps": "fast"}, 20.0, True),
        ({"canaryflow.io/simulate-rps": "-1"}, 20.0, True),
        ({"canaryflow.io/simulate-rps": "inf"}, 20.0, True),
        ({"canaryflow.io/simulate-rps": "nan"}, 20.0, True),
    ],
)
def test_rps_annotation(annotations: dict[str, str] | None, rps: float, bad: bool) -> None:
    value, problem = parse_rps(annotations, default=20.0)
    assert value == rps
    assert (problem is not None) is bad

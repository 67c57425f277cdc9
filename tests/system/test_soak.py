"""The small soak (bench/soak.py --small): every fault scenario, and all of them at once,
ends with every send billed once: nothing sent twice, nothing lost, nothing stranded and
nothing billed untracked."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from ..support import RabbitVhost

_spec = importlib.util.spec_from_file_location("soak", Path(__file__).resolve().parents[2] / "bench" / "soak.py")
soak = sys.modules["soak"] = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(soak)  # type: ignore[union-attr]


pytestmark = pytest.mark.integration  # real workers, beat, redis-server and RabbitMQ


@pytest.mark.parametrize("scenario", [
    "storm", "redis",
    "outage",
    pytest.param("netns", marks=pytest.mark.skipif(not soak.netns_possible(), reason="needs root and iproute2")),
    pytest.param("rabbit", marks=pytest.mark.skipif(not RabbitVhost.available(), reason="RabbitMQ is not running")),
    "all",
])
def test_small_soak_loses_nothing_and_sends_nothing_twice(scenario):
    result = soak.scenarios(soak.SMALL, small=True)[scenario]()
    print(result.line())
    assert result.sends == soak.SMALL.sends  # the producer's every send was accepted
    assert result.billed >= 1
    assert (result.duplicates, result.lost, result.stranded, result.untracked) == (0, 0, 0, 0), result.line()
    assert result.billed == result.sends, result.line()  # transient faults delay a send, never fail it

"""The garbage-collector policy of the real-time processes (telesurgery.gcpolicy)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from telesurgery.gcpolicy import GcPauses, settle


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """settle() freezes this test process's heap: give it back afterwards."""
    yield
    gc.unfreeze()


def test_settle_freezes_what_start_up_built_so_collections_skip_it(unfrozen: None) -> None:
    built_at_start = [[i] for i in range(5_000)]  # containers the collector tracks
    pauses = settle("test")
    try:
        assert gc.get_freeze_count() >= len(built_at_start)
        # A full collection now walks only what was made after settle(): none of these.
        walked = {id(o) for o in gc.get_objects(2)}
        assert all(gc.is_tracked(x) and id(x) not in walked for x in built_at_start)
    finally:
        pauses.uninstall()


def test_every_collection_is_counted_per_generation_with_its_pause() -> None:
    pauses = GcPauses().install()
    try:
        gc.collect(0)
        gc.collect(1)
        gc.collect(2)
    finally:
        pauses.uninstall()
    assert pauses.count == [1, 1, 1]
    assert all(ns > 0 for ns in pauses.max_ns) and pauses.total_ns >= sum(pauses.max_ns)
    s = pauses.summary()
    assert s["collections"] == [1, 1, 1] and len(s["max_pause_us"]) == 3
    assert "garbage collections per generation [1, 1, 1]" in pauses.describe()
    gc.collect(0)
    assert pauses.count == [1, 1, 1]  # uninstalled: no longer counting


def test_install_twice_counts_once() -> None:
    pauses = GcPauses().install().install()
    try:
        gc.collect(0)
    finally:
        pauses.uninstall()
    assert pauses.count[0] == 1

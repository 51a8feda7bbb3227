"""Shared HIL fixtures: a namespace pair that skips with the stated reason."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hil_tests.netns import NetnsPair, netns_available


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    """Console and robot namespaces on a veth; skipped where namespaces are impossible."""
    ok, reason = netns_available()
    if not ok:
        pytest.skip(reason)
    with NetnsPair() as pair:
        yield pair

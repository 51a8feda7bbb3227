"""Fixtures shared across test files; plain helpers live in ``helpers.py``.

Layout: ``unit/`` is in-process and fast (real sockets, ptys and threads, no child
processes); ``system/`` starts processes (robot node, console, rig, browser, CLI runs).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import zmq

if TYPE_CHECKING:
    from robot_side.kinematics import Kinematics


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """A key directory with the robot, the surgeon and the observer ``alice``."""
    from transport.keys import init_keys

    init_keys(tmp_path, ["alice"])
    return tmp_path


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture(scope="module")
def kin() -> Kinematics:
    from robot_side.kinematics import Kinematics

    return Kinematics.from_urdf()

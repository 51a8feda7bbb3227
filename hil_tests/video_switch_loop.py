"""A loop of the dual-path HIL row's last part: black out the video's path, wait for the
picture by the other one, print the picture gap and where it went (issue 16).

    python -m hil_tests.video_switch_loop [SWITCHES]

The whole rig as ``test_dual_path``'s fixture starts it (network namespaces where
available); each switch: 1.5 s of video, a 1 s blackout of the path the console's video
comes by, then up to 3 s for the switch and 3 s for a picture. The last line says how
many switches showed a picture."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from hil_tests.rig import SimRig, poll
from hil_tests.test_dual_path import (
    dual_path_rig,
    path_faults,
    picture_gaps,
    switch_splits,
    video_path,
)


def main(argv: list[str]) -> int:
    switches = int(argv[0]) if argv else 10
    shown = 0
    with tempfile.TemporaryDirectory() as tmp, dual_path_rig(Path(tmp) / "rig") as rig:
        rig.wait_following()
        for i in range(switches):
            time.sleep(1.5)
            here = video_path(rig)
            other = "A" if here == "B" else "B"
            n_gaps = len(picture_gaps(rig))
            path_faults(rig, here, {"blackout": 1.0})
            def moved(rig: SimRig = rig, other: str = other) -> bool:
                return video_path(rig) == other

            def new_gaps(rig: SimRig = rig, n: int = n_gaps) -> list[float]:
                return picture_gaps(rig)[n:]

            try:
                poll("the switch", 3.0, moved)
                gaps = poll("a picture", 3.0, new_gaps)
            except AssertionError as err:
                print(f"{i}: {here} blacked out: {err}", flush=True)
            else:
                shown += 1
                split = switch_splits(rig)[n_gaps:]
                print(f"{i}: {here} -> {other}: picture gap {gaps[0]:.1f} ms "
                      f"({split[0] if split else '?'})", flush=True)
            time.sleep(1.0)
    print(f"{shown}/{switches} switches showed a picture", flush=True)
    return 0 if shown == switches else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

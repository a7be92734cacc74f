"""Where the cores went during a reliability run (R6, R7): the server's processes and the idle cores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from cvserve.reliability.goodput import Cores

# a parent that waits on a child that computes until stopped: the child's CPU counts with the tree's
TREE = "import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'while True: pass'])\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_cores_count_the_cpu_a_process_tree_used():
    tree = subprocess.Popen([sys.executable, "-c", TREE], start_new_session=True)
    try:
        start = Cores.now(tree.pid)
        while (Cores.now(tree.pid).server_s or 0.0) - (start.server_s or 0.0) < 0.1:
            assert tree.poll() is None
        cores = Cores.now(tree.pid).since(start)
    finally:
        os.killpg(tree.pid, signal.SIGKILL)
        tree.wait()
    assert cores["server_cores"] is not None and cores["server_cores"] > 0
    assert cores["idle_cores"] is not None and cores["idle_cores"] >= 0


def test_cores_without_a_server_say_so():
    start = Cores(wall=0.0, server_s=None, idle_s=1.0)
    assert Cores(wall=2.0, server_s=None, idle_s=2.0).since(start) == {
        "server_cores": None,
        "idle_cores": 0.5,
    }


def test_the_spread_of_goodput_rounds_says_how_many_reached_the_target():
    from cvserve.reliability.goodput import _verdict, spread

    ratios = [0.88, 0.95, 0.91, 0.83, 0.97]
    s = spread(ratios)
    assert (s["rounds"], s["min"], s["median"], s["max"], s["rounds_at_target"]) == (5, 0.83, 0.91, 0.97, 3)
    assert s["min"] <= s["p25"] <= s["median"] <= s["p75"] <= s["max"]
    assert _verdict("goodput_of_unloaded", ratios).startswith(
        "target: goodput_of_unloaded >= 0.9 (met: median 0.91"
    )
    assert "(missed: median 0.88" in _verdict("goodput_of_unloaded", [0.88, 0.85, 0.93])

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
        "seconds": 2.0,
    }


def test_the_spread_of_goodput_rounds_says_how_many_reached_the_target():
    from cvserve.reliability.goodput import _verdict, spread

    ratios = [0.88, 0.95, 0.91, 0.83, 0.97]
    s = spread(ratios)
    assert (s["rounds"], s["min"], s["median"], s["max"], s["rounds_at_target"]) == (5, 0.83, 0.91, 0.97, 3)
    assert s["min"] <= s["p25"] <= s["median"] <= s["p75"] <= s["max"]
    assert _verdict("goodput_of_unloaded", s).startswith(
        "target: goodput_of_unloaded >= 0.9 (met: median 0.91"
    )
    assert "(missed: median 0.88" in _verdict("goodput_of_unloaded", spread([0.88, 0.85, 0.93]))


def test_the_server_cpu_per_answer_compares_a_loaded_stretch_with_the_unloaded_runs_around_it():
    from cvserve.reliability.goodput import _efficiency, server_ms_per_answer

    loaded = {"server_cores": 1.6, "idle_cores": 0.1, "seconds": 20.0}  # 32 s of CPU
    assert server_ms_per_answer(loaded, 3200) == 10.0
    assert server_ms_per_answer(loaded, 0) is None
    assert server_ms_per_answer({"server_cores": None, "seconds": 20.0}, 3200) is None
    unloaded = [{"server_cores": 1.8, "seconds": 5.0}, {"server_cores": 2.0, "seconds": 5.0}]
    # 1.8 and 2.0 cores for 200 answers/s: 9 and 10 ms an answer unloaded, 9.5 on average; 10 loaded
    assert _efficiency(10.0, unloaded, [200.0, 200.0]) == 0.95
    assert _efficiency(None, unloaded, [200.0, 200.0]) is None
    assert _efficiency(10.0, [{"server_cores": None}, unloaded[1]], [200.0, 200.0]) is None

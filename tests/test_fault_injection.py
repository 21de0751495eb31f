"""`make test` runs the fault-injection script (tests/fault_injection.py): kill -9 at random
points of a tiny run, rerun, compare with an uninterrupted run; disk full while writing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_fault_injection_loses_nothing():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "fault_injection.py"), "--seed", "7"],
                          env=env, capture_output=True, text=True, timeout=900)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.endswith("nothing lost") and "2 runner kills, 2 pretraining kills, 2 disk-full" in last
    assert "6 configuration and stopping cases" in last

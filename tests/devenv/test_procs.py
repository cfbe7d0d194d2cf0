"""Supervised programs: the CPU time charged to one counts every process it started."""

import sys
from pathlib import Path

from matchops_devenv.procs import Service

# A parent that starts a busy child, reaps it, then burns CPU itself until stopped.
BUSY = """
import subprocess, sys, time
subprocess.run([sys.executable, "-c", "t = __import__('time').process_time()\\n"
                "while __import__('time').process_time() - t < 0.3: pass"], check=True)
print("child done", flush=True)
while True:
    pass
"""


def test_cpu_time_counts_the_program_and_its_reaped_children(tmp_path: Path) -> None:
    service = Service("busy", [sys.executable, "-c", BUSY], tmp_path)
    service.start()
    try:
        service.wait_ready(lambda: "child done" in service.log_path.read_text(), timeout=30)
        first = service.cpu_seconds()
        # The child's 0.3 s is counted though it has exited (in its parent's reaped time).
        assert first >= 0.3
        service.wait_ready(lambda: service.cpu_seconds() >= first + 0.2, timeout=30)
    finally:
        service.stop(timeout=5)
    assert Service("never", ["true"], tmp_path).cpu_seconds() == 0.0

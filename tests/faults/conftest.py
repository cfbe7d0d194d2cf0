"""Fixtures of the fault suite: the figures each scenario reports.

Each scenario records one row (messages in, stored, dead-lettered, lost, duplicated, dead
letters repeated, recovery time). The row is printed, and appended as a JSON line to
$MATCHOPS_FAULTS_REPORT when that is set: `bench/faults.py` (`make faults-report`) runs the
suite that way and renders the rows as the table in docs/faults.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pytest

from .report import Figures

REPORT_ENV = "MATCHOPS_FAULTS_REPORT"


@pytest.fixture
def fault_report() -> Callable[[Figures], None]:
    """Record a scenario's figures."""

    def record(figures: Figures) -> None:
        print(f"fault figures: {figures}")
        target = os.environ.get(REPORT_ENV)
        if target:
            with Path(target).open("a") as out:
                out.write(json.dumps(asdict(figures)) + "\n")

    return record

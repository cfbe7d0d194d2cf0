"""The real `matchops-operator` program against the test cluster.

The operator runs as a process of its own, the way its Deployment runs it, so a test can
SIGKILL it mid-reconcile or run two of them side by side.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from matchops_devenv.access import ClusterAccess
from matchops_devenv.namespace import wait_for
from matchops_devenv.procs import Service

WORKER_IMAGE = "matchops:test"
# What kopf logs once it has logged in to the API server.
STARTED = "Initial authentication has finished."


def operator_command() -> list[str]:
    script = Path(sys.executable).with_name("matchops-operator")
    return [str(script)] if script.exists() else [sys.executable, "-m", "matchops_operator.main"]


class OperatorProcess:
    """One `matchops-operator` process serving one namespace, with its own log."""

    def __init__(
        self,
        state_dir: Path,
        cluster: ClusterAccess,
        namespace: str,
        name: str,
        *flags: str,
        poll: str = "1s",
    ) -> None:
        command = [
            *operator_command(),
            "--namespace",
            namespace,
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--poll-interval",
            poll,
            "--worker-image",
            WORKER_IMAGE,
            "--image-pull-policy",
            # The worker image is not on the node when one runs: its pods never start.
            "Never",
            "--liveness-port",
            "0",
            "--retry-max-delay",
            "2s",
            *flags,
        ]
        # The pod name, as Kubernetes sets it: Events say which replica acted.
        env = {**os.environ, "HOSTNAME": name}
        self.name = name
        self.service = Service(name, command, state_dir, env=env)

    def start(self) -> OperatorProcess:
        self.service.start()
        return self

    def wait_started(self, timeout: float = 60) -> None:
        """Wait until the operator has logged in, right before it lists and handles resources."""
        wait_for(lambda: STARTED in self.log, f"{self.name} to start", timeout, interval=0.01)

    def kill(self) -> None:
        self.service.stop(timeout=0, sig=signal.SIGKILL)

    def stop(self) -> int | None:
        """SIGTERM and wait; the exit code."""
        process = self.service.process
        if process is None:
            return None
        self.service.stop(timeout=30)
        return process.returncode

    def running(self) -> bool:
        return self.service.running()

    @property
    def log(self) -> str:
        try:
            return self.service.log_path.read_text(errors="replace")
        except OSError:
            return ""

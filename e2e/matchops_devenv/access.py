"""How tests, the demo and people reach a running cluster: kubeconfig, server, kubectl."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


class KubectlError(RuntimeError):
    """kubectl exited with an error; the message carries its command line and stderr."""

    def __init__(self, args: list[str], returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} exited with {returncode}: {stderr.strip()}")
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


@dataclass(frozen=True)
class ClusterAccess:
    """How to reach a running cluster: its kubeconfig, server URL and the matching kubectl."""

    kubeconfig: Path
    server: str
    kubectl_path: Path

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl with this cluster's kubeconfig; raise KubectlError on failure if `check`."""
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        result = subprocess.run(
            [str(self.kubectl_path), *args],
            input=input,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise KubectlError(list(args), result.returncode, result.stdout, result.stderr)
        return result

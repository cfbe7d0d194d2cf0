"""How tests, the demo and people reach a running cluster: kubeconfig, server, kubectl."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml


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

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path) -> Path:
        """A kubeconfig at `path` that authenticates as the ServiceAccount, by a short-lived
        token: what a program running with that account may do, and nothing more."""
        token = self.kubectl("create", "token", name, "-n", namespace, "--duration=1h")
        admin = yaml.safe_load(self.kubeconfig.read_text())
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": admin["clusters"][:1],
            "users": [{"name": name, "user": {"token": token.stdout.strip()}}],
            "contexts": [
                {"name": name, "context": {"cluster": admin["clusters"][0]["name"], "user": name}}
            ],
            "current-context": name,
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

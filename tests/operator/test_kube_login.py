"""kopf logs in with exactly the server and credentials of the operator's own client."""

from __future__ import annotations

from pathlib import Path

import yaml
from lightkube import KubeConfig
from matchops_operator.kube import connection_info


def kubeconfig(path: Path, user: dict[str, str], cluster: dict[str, str]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
                "contexts": [
                    {"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "ops"}}
                ],
                "current-context": "x",
            }
        )
    )
    return path


def test_client_certificates_and_ca_data(tmp_path: Path) -> None:
    config = kubeconfig(
        tmp_path / "config",
        {"client-certificate-data": "Y2VydA==", "client-key-data": "a2V5"},
        {"server": "https://127.0.0.1:6443", "certificate-authority-data": "Y2E="},
    )
    info = connection_info(KubeConfig.from_file(config))
    assert info.server == "https://127.0.0.1:6443"
    assert info.ca_data == "Y2E="
    assert (info.certificate_data, info.private_key_data) == ("Y2VydA==", "a2V5")
    assert info.token is None
    assert info.default_namespace == "ops"


def test_token_file_is_read_at_each_login_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("first\n")
    (tmp_path / "ca.crt").write_text("pem")
    config = kubeconfig(
        tmp_path / "config",
        {"tokenFile": "token"},
        {"server": "https://10.0.0.1:443", "certificate-authority": "ca.crt"},
    )
    loaded = KubeConfig.from_file(config)
    first = connection_info(loaded)
    assert first.token == "first"
    assert first.ca_path == str(tmp_path / "ca.crt")
    (tmp_path / "token").write_text("rotated\n")
    assert connection_info(loaded).token == "rotated"

"""kubeconfig rendering: one self-contained cluster, user and context."""

import base64
import stat
from pathlib import Path

import yaml
from matchops_devenv.kubeconfig import render_kubeconfig, write_kubeconfig
from matchops_devenv.pki import KeyPair

CLIENT = KeyPair(cert_pem=b"-----CERT-----\n", key_pem=b"-----KEY-----\n")


def test_render_embeds_server_ca_and_client_credentials() -> None:
    config = render_kubeconfig(
        server="https://127.0.0.1:6443", ca_pem=b"-----CA-----\n", client=CLIENT, user="alice"
    )

    cluster = config["clusters"][0]
    user = config["users"][0]
    assert cluster["cluster"]["server"] == "https://127.0.0.1:6443"
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]) == b"-----CA-----\n"
    assert base64.b64decode(user["user"]["client-certificate-data"]) == CLIENT.cert_pem
    assert base64.b64decode(user["user"]["client-key-data"]) == CLIENT.key_pem
    assert user["name"] == "alice"
    assert config["contexts"] == [
        {"name": "matchops", "context": {"cluster": "matchops", "user": "alice"}}
    ]
    assert config["current-context"] == "matchops"


def test_render_sets_a_default_namespace_when_asked() -> None:
    config = render_kubeconfig(
        server="https://[::1]:6443", ca_pem=b"ca", client=CLIENT, namespace="ingest"
    )

    assert config["contexts"][0]["context"]["namespace"] == "ingest"


def test_written_kubeconfig_reads_back_and_is_private(tmp_path: Path) -> None:
    config = render_kubeconfig(server="https://127.0.0.1:1", ca_pem=b"ca", client=CLIENT)

    path = write_kubeconfig(tmp_path / "sub" / "kubeconfig", config)

    assert yaml.safe_load(path.read_text()) == config
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

"""The control plane's command lines and layout, decided without starting anything."""

from pathlib import Path

from matchops_devenv.controlplane import (
    ControlPlaneConfig,
    Layout,
    Ports,
    apiserver_args,
    controller_manager_args,
    etcd_args,
)

LAYOUT = Layout(Path("/state"))
# What binding to every interface looks like; these tests only pass it around.
EVERYWHERE = "0.0.0.0"  # noqa: S104
PORTS = Ports(etcd_client=2379, etcd_peer=2380, apiserver=6443, controller_manager=10257)


def _flags(argv: list[str]) -> dict[str, str]:
    return dict(arg.removeprefix("--").split("=", 1) for arg in argv[1:] if "=" in arg)


def test_etcd_serves_loopback_only_from_the_state_dir() -> None:
    flags = _flags(etcd_args(Path("/bin/etcd"), LAYOUT, PORTS))

    assert flags["listen-client-urls"] == "http://127.0.0.1:2379"
    assert flags["listen-peer-urls"] == "http://127.0.0.1:2380"
    assert flags["data-dir"] == "/state/etcd/data"


def test_apiserver_defaults_to_loopback_without_published_endpoints() -> None:
    argv = apiserver_args(Path("/bin/kube-apiserver"), LAYOUT, ControlPlaneConfig(), PORTS)
    flags = _flags(argv)

    assert argv[0] == "/bin/kube-apiserver"
    assert flags["bind-address"] == "127.0.0.1"
    assert flags["advertise-address"] == "127.0.0.1"
    assert flags["secure-port"] == "6443"
    assert flags["etcd-servers"] == "http://127.0.0.1:2379"
    assert flags["endpoint-reconciler-type"] == "none"
    assert flags["client-ca-file"] == "/state/pki/ca.crt"
    assert flags["service-account-signing-key-file"] == "/state/pki/service-account.key"
    assert flags["kubelet-preferred-address-types"] == "InternalIP,Hostname"
    assert flags["authorization-mode"] == "Node,RBAC"


def test_apiserver_on_a_bridge_address_publishes_it() -> None:
    config = ControlPlaneConfig(bind_address=EVERYWHERE, advertise_address="10.88.0.1")

    flags = _flags(apiserver_args(Path("kube-apiserver"), LAYOUT, config, PORTS))

    assert flags["bind-address"] == EVERYWHERE
    assert flags["advertise-address"] == "10.88.0.1"
    assert "endpoint-reconciler-type" not in flags


def test_clients_dial_loopback_when_the_apiserver_binds_everywhere() -> None:
    assert ControlPlaneConfig(bind_address=EVERYWHERE).client_host == "127.0.0.1"
    assert ControlPlaneConfig(bind_address="10.88.0.1").client_host == "10.88.0.1"
    assert ControlPlaneConfig(bind_address="10.88.0.1").advertised == "10.88.0.1"


def test_service_cidr_reaches_both_apiserver_and_controller_manager() -> None:
    config = ControlPlaneConfig(service_cidr="10.0.0.0/24")

    apiserver = _flags(apiserver_args(Path("a"), LAYOUT, config, PORTS))
    manager = _flags(controller_manager_args(Path("m"), LAYOUT, config, PORTS))

    assert apiserver["service-cluster-ip-range"] == "10.0.0.0/24"
    assert manager["service-cluster-ip-range"] == "10.0.0.0/24"


def test_controller_manager_runs_every_controller_with_the_service_account_key() -> None:
    flags = _flags(controller_manager_args(Path("m"), LAYOUT, ControlPlaneConfig(), PORTS))

    assert flags["controllers"] == "*"
    assert flags["kubeconfig"] == "/state/kubeconfigs/kube-controller-manager.kubeconfig"
    assert flags["service-account-private-key-file"] == "/state/pki/service-account.key"
    assert flags["root-ca-file"] == "/state/pki/ca.crt"
    assert flags["bind-address"] == "127.0.0.1"
    assert flags["secure-port"] == "10257"
    assert flags["cluster-cidr"] == "10.244.0.0/16"
    assert flags["allocate-node-cidrs"] == "true"


def test_controller_manager_allocates_no_pod_cidrs_without_a_pod_network() -> None:
    config = ControlPlaneConfig(cluster_cidr=None)

    flags = _flags(controller_manager_args(Path("m"), LAYOUT, config, PORTS))

    assert "cluster-cidr" not in flags
    assert "allocate-node-cidrs" not in flags


def test_layout_keeps_node_components_apart() -> None:
    assert LAYOUT.kubeconfig == Path("/state/kubeconfig")
    assert LAYOUT.nodes == Path("/state/nodes")
    assert LAYOUT.cert("apiserver") == Path("/state/pki/apiserver.crt")
    assert LAYOUT.component_kubeconfig("kube-scheduler") == Path(
        "/state/kubeconfigs/kube-scheduler.kubeconfig"
    )

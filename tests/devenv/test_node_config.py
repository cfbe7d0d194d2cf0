"""The node's network plan and its components' configuration, decided without a machine."""

import ipaddress
import json
import tomllib
from pathlib import Path

import pytest
from matchops_devenv.containerd import seed_key
from matchops_devenv.node import NodeError, pod_url
from matchops_devenv.nodeconfig import (
    NodeLayout,
    containerd_config,
    kube_proxy_config,
    kubelet_config,
    render_toml,
)
from matchops_devenv.nodenet import (
    NetworkPlanError,
    NodeNetwork,
    chain_of,
    cni_conflist,
    id_in,
    name_of,
    parse_pod_subnet,
    pick_link,
)

NET = ipaddress.IPv4Network


def network(node_id: str = "0a1b2c", link: str = "10.213.0.4/30") -> NodeNetwork:
    return NodeNetwork(node_id, NET(link), NET("10.244.0.0/24"))


def test_every_host_name_carries_the_node_id_and_fits_an_interface_name() -> None:
    plan = network()
    assert plan.netns == plan.host_link == plan.cni_network == "matchops-0a1b2c"
    assert len(plan.host_link) <= 15
    assert plan.chain == chain_of("0a1b2c") == "MATCHOPS-0a1b2c"
    assert id_in(name_of("0a1b2c")) == "0a1b2c"


@pytest.mark.parametrize("name", ["matchops-test", "matchops-0A1B2C", "matchops-0a1b2c3", "cni0"])
def test_names_that_are_not_a_node_id_are_not_ours(name: str) -> None:
    assert id_in(name) is None


def test_addresses_of_a_node() -> None:
    plan = network(link="10.213.0.4/30")
    assert str(plan.host_address) == "10.213.0.5"
    assert str(plan.node_address) == "10.213.0.6"
    assert str(plan.gateway) == "10.244.0.1"


@pytest.mark.parametrize(
    ("node_id", "link", "subnet", "bridge", "problem"),
    [
        ("xyz", "10.213.0.0/30", "10.244.0.0/24", "matchops0", "six hex digits"),
        ("0a1b2c", "10.213.0.0/29", "10.244.0.0/24", "matchops0", "not a /30"),
        ("0a1b2c", "10.244.0.0/30", "10.244.0.0/24", "matchops0", "overlaps"),
        ("0a1b2c", "10.213.0.0/30", "10.244.0.0/31", "matchops0", "no room"),
        ("0a1b2c", "10.213.0.0/30", "10.244.0.0/24", "a-bridge-name-too-long", "15 characters"),
    ],
)
def test_impossible_plans_are_refused(
    node_id: str, link: str, subnet: str, bridge: str, problem: str
) -> None:
    with pytest.raises(NetworkPlanError, match=problem):
        NodeNetwork(node_id, NET(link), NET(subnet), bridge)


def test_a_link_avoids_other_nodes_and_host_networks() -> None:
    taken = [NET("10.213.0.0/30")]
    in_use = [NET("10.213.0.4/31"), NET("192.0.2.0/24")]
    assert pick_link("10.213.0.0/16", taken, in_use) == NET("10.213.0.8/30")


def test_a_full_link_range_is_an_error() -> None:
    with pytest.raises(NetworkPlanError, match="no free /30"):
        pick_link("10.213.0.0/29", [NET("10.213.0.0/30")], [NET("10.213.0.4/30")])


@pytest.mark.parametrize("text", ["fd00::/64", "10.213.0.0/31"])
def test_a_link_range_must_hold_ipv4_slash_30s(text: str) -> None:
    with pytest.raises(NetworkPlanError):
        pick_link(text, [], [])


@pytest.mark.parametrize("text", ["10.244.0.1/24", "fd00::/64", "pods"])
def test_pod_subnet_options_are_checked(text: str) -> None:
    with pytest.raises(NetworkPlanError, match="pod subnet"):
        parse_pod_subnet(text)


def test_cni_configuration_uses_the_node_bridge_and_subnet(tmp_path: Path) -> None:
    conflist = cni_conflist(network(), str(tmp_path / "ipam"))
    json.dumps(conflist)  # CNI reads JSON
    bridge, portmap = conflist["plugins"]
    assert conflist["name"] == "matchops-0a1b2c"
    assert bridge["type"] == "bridge"
    assert bridge["bridge"] == "matchops0"
    assert bridge["isGateway"] is True
    # The node translates its pods' connections with its own SNAT rule (hostnet).
    assert bridge["ipMasq"] is False
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.244.0.0/24"}]]
    # host-local keeps its leases in the node's directory, not /var/lib/cni/networks.
    assert bridge["ipam"]["dataDir"] == str(tmp_path / "ipam")
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}}


def layout() -> NodeLayout:
    return NodeLayout(Path("/state/nodes/0a1b2c"))


def test_containerd_keeps_everything_in_the_node_directory() -> None:
    config = tomllib.loads(
        render_toml(containerd_config(layout(), "localhost/pause:1", "/matchops-0a1b2c/containerd"))
    )
    root = "/state/nodes/0a1b2c/"
    assert config["version"] == 2
    assert config["root"].startswith(root)
    assert config["state"].startswith(root)
    assert config["grpc"]["address"] == root + "containerd/containerd.sock"
    assert config["cgroup"]["path"] == "/matchops-0a1b2c/containerd"
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["netns_mounts_under_state_dir"] is True
    assert cri["cni"]["conf_dir"].startswith(root)
    runc = cri["containerd"]["runtimes"]["runc"]["options"]
    assert runc["Root"].startswith(root)
    assert config["plugins"]["io.containerd.internal.v1.opt"]["path"].startswith(root)


def test_containerd_is_set_up_for_this_kind_of_host() -> None:
    config = tomllib.loads(
        render_toml(containerd_config(layout(), "localhost/pause:1", "/matchops-0a1b2c/x"))
    )
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True
    assert cri["sandbox_image"] == "localhost/pause:1"
    assert cri["cni"]["bin_dir"] == "/usr/lib/cni"
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    # containerd 1.6 loads no CRI without the v1 runtime plugin.
    assert "io.containerd.runtime.v1.linux" not in config["disabled_plugins"]


def test_toml_rendering_quotes_what_needs_quoting() -> None:
    text = render_toml({"a": {"b.c": {"d": 'say "hi"', "e": [1, True]}}, "f": "x\\y"})
    assert tomllib.loads(text) == {"a": {"b.c": {"d": 'say "hi"', "e": [1, True]}}, "f": "x\\y"}


def test_kubelet_runs_on_cgroupfs_v1_within_its_own_directory_and_cgroup() -> None:
    config = kubelet_config(layout(), network(), "/matchops-0a1b2c", Path("/state/pki/ca.crt"))
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["failCgroupV1"] is False
    assert config["failSwapOn"] is False
    assert config["cgroupRoot"] == "/matchops-0a1b2c"
    assert config["containerRuntimeEndpoint"] == (
        "unix:///state/nodes/0a1b2c/containerd/containerd.sock"
    )
    for key in ("podLogsDir", "volumePluginDir", "tlsCertFile", "tlsPrivateKeyFile"):
        assert config[key].startswith("/state/nodes/0a1b2c/"), key
    assert config["address"] == "10.213.0.6"
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authentication"]["x509"]["clientCAFile"] == "/state/pki/ca.crt"
    assert config["authorization"]["mode"] == "Webhook"


def test_kubelet_evicts_only_when_the_machine_is_really_short() -> None:
    hard = kubelet_config(layout(), network(), "/m", Path("/ca.crt"))["evictionHard"]
    assert hard["memory.available"] == "100Mi"
    assert all(hard[k] == "1%" for k in ("nodefs.available", "imagefs.available"))


def test_kube_proxy_uses_iptables_and_the_node_pod_subnet() -> None:
    config = kube_proxy_config(network(), "matchops-node", Path("/k"))
    assert config["mode"] == "iptables"
    assert config["clusterCIDR"] == "10.244.0.0/24"
    assert config["hostnameOverride"] == "matchops-node"
    # Machine-wide conntrack settings stay untouched.
    assert config["conntrack"]["maxPerCore"] == 0
    assert config["conntrack"]["min"] == 0


def test_a_node_directory_too_deep_for_a_socket_is_refused() -> None:
    NodeLayout(Path("/tmp/n")).check()
    with pytest.raises(ValueError, match="too deep"):
        NodeLayout(Path("/" + "d" * 80)).check()


def reach_loopback(host: str, port: int) -> str:
    assert port in (5672, 5432, 8080)
    return "10.213.0.1" if host in ("127.0.0.1", "localhost") else host


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://u:p%40ss@127.0.0.1:5672/vh", "amqp://u:p%40ss@10.213.0.1:5672/vh"),
        ("amqp://u:p@localhost/%2F", "amqp://u:p@10.213.0.1:5672/%2F"),
        (
            "postgresql://postgres:pw@127.0.0.1:5432/db?x=1",
            "postgresql://postgres:pw@10.213.0.1:5432/db?x=1",
        ),
        ("http://192.0.2.2:8080/api", "http://192.0.2.2:8080/api"),
    ],
)
def test_pod_urls_keep_everything_but_the_host(url: str, expected: str) -> None:
    assert pod_url(url, reach_loopback) == expected


def test_a_url_without_host_or_known_port_is_an_error() -> None:
    with pytest.raises(NodeError, match="names no host"):
        pod_url("amqp:///vh", reach_loopback)
    with pytest.raises(NodeError, match="no default"):
        pod_url("redis://127.0.0.1/0", reach_loopback)


def test_an_image_store_is_keyed_by_its_archives_and_containerd() -> None:
    pause, project = Path("/c/pause-aaaa.tar"), Path("/c/project-bbbb.tar")
    key = seed_key([pause, project], "containerd 1.6.20")
    assert key == seed_key([Path("/elsewhere/pause-aaaa.tar"), project], "containerd 1.6.20")
    assert key != seed_key([pause, Path("/c/project-cccc.tar")], "containerd 1.6.20")
    assert key != seed_key([pause, project], "containerd 1.7.0")
    assert key != seed_key([pause], "containerd 1.6.20")

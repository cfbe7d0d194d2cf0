"""The node's network on the host: namespace, veth link, bridge, and forwards to host services.

The rules this adds to the host's own iptables are one nat chain per node, `MATCHOPS-<id>`,
jumped to from PREROUTING for packets arriving on the node's link and from OUTPUT for this
machine's own connections to the link address, and one filter rule in INPUT for that link (all
commented with the node's id). The chain forwards connections to a port of the host to the
same port on loopback, so pods reach loopback-only services (the API server, the test RabbitMQ
and PostgreSQL) through the host's link address, and so do programs on this machine. The link
allows that with `route_localnet`, set on the link alone.

The filter rule drops packets from the link that connection tracking finds invalid (out of
the TCP window it tracks, say, under load). Such a packet is not translated back to loopback:
it would reach the link address itself, where nothing listens, and the host would answer with
a reset that kills the pod's connection. Dropped, it is sent again like any lost packet (the
rule kube-proxy keeps for Services, for the same reason). Inside the node's namespace, which
translates the pods' connections, window tracking is relaxed and invalid packets arriving
for the node itself are dropped too, for the same reason in the other direction.

The node translates its pods' connections to its own address with a fixed SNAT rule, not the
CNI plugin's masquerade: when a pod's interface was removed, connection tracking in the node's
namespace forgot other, running pods' masqueraded connections, and the server's next packet,
reaching the node's own address untranslated, was answered with a reset (a worker lost its
broker and database sessions at once when the scraper's pod went away). Connections
translated by SNAT are not tied to any interface and outlive the pods around them.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from matchops_devenv.nodenet import NodeNetwork, chain_of, id_in, name_of

NETNS_DIR = Path("/run/netns")
LINK_GONE_TIMEOUT = 5.0


class HostNetworkError(RuntimeError):
    """A command that sets up or removes a node's network failed."""


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    except FileNotFoundError as error:
        raise HostNetworkError(
            f"{argv[0]} not found: the node needs iproute2 and iptables (`make deps`)"
        ) from error
    if check and done.returncode != 0:
        raise HostNetworkError(
            f"{' '.join(argv)} exited with {done.returncode}: {done.stderr.strip()}"
        )
    return done


def in_netns(network: NodeNetwork, argv: Sequence[str]) -> list[str]:
    """`argv` run inside the node's network namespace (and nothing else's)."""
    return ["nsenter", f"--net={NETNS_DIR / network.netns}", "--", *argv]


def _sysctl_in(network: NodeNetwork, key: str, value: str) -> None:
    _run(in_netns(network, ["sysctl", "-q", "-w", f"{key}={value}"]))


def create(network: NodeNetwork) -> None:
    """Create the node's namespace, its link to the host, the pods' bridge and the nat chain."""
    netns, host_link, node_link = network.netns, network.host_link, network.node_link
    _run(["ip", "netns", "add", netns])
    veth = ["type", "veth", "peer", "name", node_link, "netns", netns]
    _run(["ip", "link", "add", host_link, *veth])
    _run(
        ["ip", "addr", "add", f"{network.host_address}/{network.link.prefixlen}", "dev", host_link]
    )
    # Connections forwarded to loopback arrive on this link; the kernel drops them otherwise.
    Path(f"/proc/sys/net/ipv4/conf/{host_link}/route_localnet").write_text("1")
    _run(["ip", "link", "set", host_link, "up"])
    node = ["ip", "-n", netns]
    _run([*node, "link", "set", "lo", "up"])
    node_address = f"{network.node_address}/{network.link.prefixlen}"
    _run([*node, "addr", "add", node_address, "dev", node_link])
    _run([*node, "link", "set", node_link, "up"])
    _run([*node, "route", "add", "default", "via", str(network.host_address)])
    # Made here rather than by the CNI plugin at the first pod, so the node's network is
    # complete before any pod starts; the plugin adopts it.
    _run([*node, "link", "add", network.bridge, "type", "bridge"])
    gateway = f"{network.gateway}/{network.pod_subnet.prefixlen}"
    _run([*node, "addr", "add", gateway, "dev", network.bridge])
    _run([*node, "link", "set", network.bridge, "up"])
    # All are per network namespace: the host's own settings stay as they are.
    _sysctl_in(network, "net.ipv4.ip_forward", "1")
    _sysctl_in(network, "net.bridge.bridge-nf-call-iptables", "1")
    # Pods' connections leave under the node's address (see the module's docstring).
    pods = str(network.pod_subnet)
    snat = ["-s", pods, "!", "-d", pods, "-o", network.node_link, "-j", "SNAT"]
    to_node = ["--to-source", str(network.node_address)]
    _run(in_netns(network, ["iptables", "-w", "-t", "nat", "-A", "POSTROUTING", *snat, *to_node]))
    # A reply that connection tracking here found out of its window would not be translated
    # back: it would reach the node's own address, which answers with a reset, and the reset
    # would go on to the server and end the pod's connection. Window tracking is relaxed here
    # (as kube-proxy can do for a node) and any packet still found invalid on its way in is
    # dropped, to be sent again.
    _sysctl_in(network, "net.netfilter.nf_conntrack_tcp_be_liberal", "1")
    _run(in_netns(network, ["iptables", "-w", "-I", "INPUT", *_drop_invalid(network.node_id)]))
    chain = network.chain
    _run(["iptables", "-w", "-t", "nat", "-N", chain])
    comment = ["-m", "comment", "--comment", _comment(network.node_id), "-j", chain]
    # From the node; and from this machine to the link address, so that the same URLs work
    # for pods and for programs here (an operator run in-process shares its Secrets with pods).
    nat = ["iptables", "-w", "-t", "nat", "-I"]
    _run([*nat, "PREROUTING", "-i", host_link, *comment])
    _run([*nat, "OUTPUT", "-d", f"{network.host_address}/32", *comment])
    _run(["iptables", "-w", "-I", "INPUT", "-i", host_link, *_drop_invalid(network.node_id)])


def _comment(node_id: str) -> str:
    """The comment on every host rule of node `node_id`, by which leftovers are found."""
    return f"matchops node {node_id}"


def _drop_invalid(node_id: str) -> list[str]:
    """The match and target of an INPUT rule that drops packets connection tracking finds
    invalid, commented with the node's id (the host's rule adds the link it applies to)."""
    return [
        "-m",
        "conntrack",
        "--ctstate",
        "INVALID",
        "-m",
        "comment",
        "--comment",
        _comment(node_id),
        "-j",
        "DROP",
    ]


def forward_to_loopback(network: NodeNetwork, port: int) -> None:
    """Let the node reach the host's loopback-only service on `port` at the host's addresses."""
    rule = [
        "-p",
        "tcp",
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "--dport",
        str(port),
        "-j",
        "DNAT",
        "--to-destination",
        f"127.0.0.1:{port}",
    ]
    check = _run(["iptables", "-w", "-t", "nat", "-C", network.chain, *rule], check=False)
    if check.returncode != 0:
        _run(["iptables", "-w", "-t", "nat", "-A", network.chain, *rule])


def delete(node_id: str) -> None:
    """Remove the node's namespace (its link, bridge and rules go with it), its nat chain and
    its filter rule.

    Safe to call for parts that were never created or are already gone.
    """
    name = name_of(node_id)
    chain = chain_of(node_id)
    drop = ["-i", name, *_drop_invalid(node_id)]
    while _run(["iptables", "-w", "-C", "INPUT", *drop], check=False).returncode == 0:
        _run(["iptables", "-w", "-D", "INPUT", *drop])
    for hook in ("PREROUTING", "OUTPUT"):
        rules = _run(["iptables", "-w", "-t", "nat", "-S", hook]).stdout.splitlines()
        for rule in rules:
            words = shlex.split(rule)
            if words[:2] == ["-A", hook] and words[-2:] == ["-j", chain]:
                _run(["iptables", "-w", "-t", "nat", "-D", *words[1:]])
    if _run(["iptables", "-w", "-t", "nat", "-F", chain], check=False).returncode == 0:
        _run(["iptables", "-w", "-t", "nat", "-X", chain])
    if (NETNS_DIR / name).exists():
        _run(["ip", "netns", "delete", name])
    # The kernel tears a namespace down in the background; its veth pair goes with it.
    deadline = time.monotonic() + LINK_GONE_TIMEOUT
    while link_exists(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    if link_exists(name):
        _run(["ip", "link", "delete", name], check=False)
        if link_exists(name):
            raise HostNetworkError(f"link {name} survived deleting it")


def link_exists(name: str) -> bool:
    return _run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def node_ids_on_host() -> set[str]:
    """Ids of nodes with a namespace, link or nat chain on this host, ours or leftovers."""
    found: set[str] = set()
    if NETNS_DIR.is_dir():
        found.update(i for entry in NETNS_DIR.iterdir() if (i := id_in(entry.name)))
    links = json.loads(_run(["ip", "-j", "link", "show"]).stdout or "[]")
    found.update(i for link in links if (i := id_in(str(link.get("ifname", "")))))
    rules = _run(["iptables", "-w", "-t", "nat", "-S"]).stdout.splitlines()
    for rule in rules:
        parts = rule.split()
        if len(parts) == 2 and parts[0] == "-N" and parts[1].startswith("MATCHOPS-"):
            candidate = parts[1].removeprefix("MATCHOPS-")
            if (i := id_in(name_of(candidate))) is not None:
                found.add(i)
    for rule in _run(["iptables", "-w", "-S", "INPUT"]).stdout.splitlines():
        words = shlex.split(rule)
        if "--comment" in words and "-i" in words:
            comment = words[words.index("--comment") + 1]
            link = words[words.index("-i") + 1]
            if (i := id_in(link)) is not None and comment == _comment(i):
                found.add(i)
    return found


def host_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks of the host's addresses and routes, which a new link must avoid."""
    networks: list[ipaddress.IPv4Network] = []
    for route in json.loads(
        _run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]"
    ):
        destination = route.get("dst", "")
        if destination in ("", "default") or route.get("type") in ("broadcast", "local"):
            continue
        try:
            networks.append(ipaddress.IPv4Network(destination, strict=False))
        except ValueError:
            continue
    for link in json.loads(_run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]"):
        for address in link.get("addr_info", []):
            interface = ipaddress.IPv4Interface(f"{address['local']}/{address['prefixlen']}")
            networks.append(interface.network)
    return networks

"""The names and addresses of a node's network, decided without touching the machine.

A node lives in a network namespace of its own, joined to the host by a veth pair on a small
link network:

    host netns                              node netns (matchops-<id>)
    matchops-<id>  10.213.0.1/30  <──veth──>  eth0  10.213.0.2/30   (the node's InternalIP)
                                              matchops0  10.244.0.1/24  (bridge; pods' gateway)
                                              pods  10.244.0.2 ...

Everything kube-proxy, the CNI plugins and the kubelet do to iptables happens inside the node's
namespace, so concurrent nodes never see each other's rules and deleting the namespace removes
them all. Pods leave the node translated to the node's address; the host reaches the node (and
the API server reaches the kubelet) on the link. The pod subnet is private to the namespace,
so every node may use the same one.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

PREFIX = "matchops-"
# Six hex digits keep every derived name within Linux's 15-character interface names.
ID_PATTERN = re.compile(r"[0-9a-f]{6}")
LINK_PREFIXLEN = 30

IPv4Network = ipaddress.IPv4Network
IPv4Address = ipaddress.IPv4Address


class NetworkPlanError(ValueError):
    """A node's network cannot be laid out as asked."""


def name_of(node_id: str) -> str:
    """The name every host object of node `node_id` carries: netns, host link, cgroup."""
    return f"{PREFIX}{node_id}"


def id_in(name: str) -> str | None:
    """The node id a host object's name carries, if it is one of ours."""
    if not name.startswith(PREFIX):
        return None
    candidate = name[len(PREFIX) :]
    return candidate if ID_PATTERN.fullmatch(candidate) else None


def chain_of(node_id: str) -> str:
    """The host's nat chain that forwards the node's traffic to host services."""
    return f"MATCHOPS-{node_id}"


@dataclass(frozen=True)
class NodeNetwork:
    """One node's network: its namespace, link to the host and pod subnet."""

    node_id: str
    link: IPv4Network
    pod_subnet: IPv4Network
    bridge: str = "matchops0"

    def __post_init__(self) -> None:
        if not ID_PATTERN.fullmatch(self.node_id):
            raise NetworkPlanError(f"node id {self.node_id!r} is not six hex digits")
        if self.link.prefixlen != LINK_PREFIXLEN:
            raise NetworkPlanError(f"link {self.link} is not a /{LINK_PREFIXLEN}")
        if self.pod_subnet.num_addresses < 4:
            raise NetworkPlanError(f"pod subnet {self.pod_subnet} has no room for pods")
        if self.link.overlaps(self.pod_subnet):
            raise NetworkPlanError(f"link {self.link} overlaps pod subnet {self.pod_subnet}")
        if not 0 < len(self.bridge) <= 15:
            raise NetworkPlanError(f"bridge name {self.bridge!r} is not 1 to 15 characters")

    @property
    def netns(self) -> str:
        return name_of(self.node_id)

    @property
    def host_link(self) -> str:
        """The host's end of the veth pair."""
        return name_of(self.node_id)

    @property
    def node_link(self) -> str:
        """The node's end of the veth pair, inside its namespace."""
        return "eth0"

    @property
    def host_address(self) -> IPv4Address:
        """The host as the node and its pods reach it."""
        return self.link.network_address + 1

    @property
    def node_address(self) -> IPv4Address:
        """The node's InternalIP: the kubelet serves here, the API server dials it."""
        return self.link.network_address + 2

    @property
    def gateway(self) -> IPv4Address:
        """The bridge's address, the pods' default gateway."""
        return self.pod_subnet.network_address + 1

    @property
    def chain(self) -> str:
        return chain_of(self.node_id)

    @property
    def cni_network(self) -> str:
        """The CNI network's name; libcni's cache files on the host start with it."""
        return name_of(self.node_id)


def pick_link(
    link_range: str, taken: Iterable[IPv4Network], in_use: Iterable[IPv4Network]
) -> IPv4Network:
    """The first /30 of `link_range` that no other node holds and no host network overlaps."""
    network = ipaddress.ip_network(link_range, strict=True)
    if not isinstance(network, IPv4Network) or network.prefixlen > LINK_PREFIXLEN:
        raise NetworkPlanError(f"link range {link_range} is not an IPv4 network of /30 or more")
    held = set(taken)
    busy = list(in_use)
    for candidate in network.subnets(new_prefix=LINK_PREFIXLEN):
        if candidate in held or any(candidate.overlaps(other) for other in busy):
            continue
        return candidate
    raise NetworkPlanError(f"no free /{LINK_PREFIXLEN} left in {link_range}")


def parse_pod_subnet(text: str) -> IPv4Network:
    """A pod subnet option, refused with a clear message when it is not an IPv4 network."""
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as error:
        raise NetworkPlanError(f"pod subnet {text!r}: {error}") from None
    if not isinstance(network, IPv4Network):
        raise NetworkPlanError(f"pod subnet {text} is not IPv4")
    return network


def cni_conflist(network: NodeNetwork, ipam_dir: str) -> dict[str, object]:
    """The node's CNI configuration: a bridge with host-local addresses, plus port mappings."""
    return {
        "cniVersion": "1.0.0",
        "name": network.cni_network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": network.bridge,
                "isGateway": True,
                # Pods leave the node under its address (the host needs no route to them), by
                # the node's own SNAT rule rather than the plugin's masquerade (hostnet says why).
                "ipMasq": False,
                # A pod reaching itself through a Service's address comes back on its own port.
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(network.pod_subnet)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir,
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }

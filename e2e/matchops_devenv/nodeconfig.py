"""The node's files: where they live and what containerd, kubelet and kube-proxy are told.

Pure: paths and configuration values, no I/O, so every setting the host needs is tested on its
own. Every path a component would otherwise take from its defaults under /var, /run, /etc or
/opt is pointed into the node's state directory:

    <node>/
      containerd/        config.toml, containerd.sock, root/ (images, snapshots), state/
                         (tasks, pod network namespaces), opt/; containerd.log, containerd.pid
      runc/              runc's state
      cni/net.d/         the node's CNI configuration; cni/ipam/ its address leases
      kubelet/           config.yaml, kubeconfig, serving certificate, kubelet.log/.pid
      kubelet/root/      the kubelet's root directory (pods' volumes, plugins, checkpoints)
      kubelet/pod-logs/  container logs
      kube-proxy/        config.yaml, kubeconfig, kube-proxy.log/.pid
      kube-scheduler/    kubeconfig, serving certificate, kube-scheduler.log/.pid
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matchops_devenv.nodenet import NodeNetwork

# containerd refuses socket paths longer than this (the shortest limit among the systems it
# supports, not Linux's 107).
MAX_SOCKET_PATH = 104
KUBELET_PORT = 10250
KUBE_PROXY_HEALTHZ_PORT = 10256
# What the kubelet checks the API server's certificate against when it dials the host's link
# address, which the certificate does not name; the serving certificate names the Service.
API_SERVER_NAME = "kubernetes"
# Eviction only when the machine is really short: the disk and memory are shared with other
# work, and a test pod evicted because a neighbour filled the disk to 86 % proves nothing.
EVICTION_HARD = {
    "memory.available": "100Mi",
    "nodefs.available": "1%",
    "nodefs.inodesFree": "1%",
    "imagefs.available": "1%",
    "imagefs.inodesFree": "1%",
}


@dataclass(frozen=True)
class NodeLayout:
    """Paths inside a node's state directory."""

    root: Path

    def component_dir(self, component: str) -> Path:
        """A component's directory, with its configuration, log and pid files."""
        return self.root / component

    @property
    def containerd_config(self) -> Path:
        return self.component_dir("containerd") / "config.toml"

    @property
    def containerd_socket(self) -> Path:
        return self.component_dir("containerd") / "containerd.sock"

    @property
    def containerd_root(self) -> Path:
        return self.component_dir("containerd") / "root"

    @property
    def containerd_state(self) -> Path:
        return self.component_dir("containerd") / "state"

    @property
    def runc_root(self) -> Path:
        return self.root / "runc"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def kubelet_root(self) -> Path:
        return self.component_dir("kubelet") / "root"

    @property
    def pod_logs(self) -> Path:
        return self.component_dir("kubelet") / "pod-logs"

    def config(self, component: str) -> Path:
        """A component's configuration file (kubelet, kube-proxy)."""
        return self.component_dir(component) / "config.yaml"

    def kubeconfig(self, component: str) -> Path:
        return self.component_dir(component) / "kubeconfig"

    def cert(self, component: str) -> Path:
        return self.component_dir(component) / "serving.crt"

    def key(self, component: str) -> Path:
        return self.component_dir(component) / "serving.key"

    def check(self) -> None:
        """Refuse a directory so deep that containerd's sockets could not be created in it."""
        # containerd adds ".ttrpc" for its second socket.
        longest = len(str(self.containerd_socket)) + len(".ttrpc")
        if longest > MAX_SOCKET_PATH:
            raise ValueError(
                f"node directory {self.root} is too deep for containerd's socket "
                f"({longest} > {MAX_SOCKET_PATH} bytes); choose a shorter state directory"
            )


def render_toml(table: Mapping[str, Any]) -> str:
    """TOML for nested tables of strings, booleans, integers and lists of strings."""
    lines: list[str] = []
    _toml_table(lines, [], table)
    return "\n".join(lines) + "\n"


def _toml_table(lines: list[str], path: Sequence[str], table: Mapping[str, Any]) -> None:
    scalars = {key: value for key, value in table.items() if not isinstance(value, Mapping)}
    tables = {key: value for key, value in table.items() if isinstance(value, Mapping)}
    if path and scalars:
        lines.append(f"[{'.'.join(_toml_key(part) for part in path)}]")
    for key, value in scalars.items():
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in tables.items():
        _toml_table(lines, [*path, key], value)


def _toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum()
    return key if bare else _toml_string(key)


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


CRI = "io.containerd.grpc.v1.cri"


def containerd_config(
    layout: NodeLayout, sandbox_image: str, cgroup: str, cni_bin_dir: str = "/usr/lib/cni"
) -> dict[str, Any]:
    """containerd's configuration: its own root, state and socket, CRI for a cgroup v1 host."""
    return {
        "version": 2,
        "root": str(layout.containerd_root),
        "state": str(layout.containerd_state),
        # Snapshotters this node has no use for. (The v1 runtime stays: containerd 1.6's task
        # service, and with it CRI, does not load without it.)
        "disabled_plugins": [
            "io.containerd.snapshotter.v1.aufs",
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.devmapper",
            "io.containerd.snapshotter.v1.zfs",
            "io.containerd.tracing.processor.v1.otlp",
        ],
        "grpc": {"address": str(layout.containerd_socket)},
        # containerd, and the shims it starts, run in this cgroup: whatever outlives a crash
        # is found there.
        "cgroup": {"path": cgroup},
        "plugins": {
            CRI: {
                "sandbox_image": sandbox_image,
                # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails with
                # "runc create failed: ... can't get final child's PID from pipe: EOF".
                "restrict_oom_score_adj": True,
                # Pods' network namespaces go under the state directory, not /run/netns.
                "netns_mounts_under_state_dir": True,
                "disable_apparmor": True,
                "enable_tls_streaming": False,
                # The node's namespace has a loopback of its own; the kubelet beside it proxies.
                "stream_server_address": "127.0.0.1",
                "stream_server_port": "0",
                "cni": {
                    "bin_dir": cni_bin_dir,
                    "conf_dir": str(layout.cni_conf_dir),
                    "max_conf_num": 1,
                },
                "containerd": {
                    "snapshotter": "overlayfs",
                    "default_runtime_name": "runc",
                    "runtimes": {
                        "runc": {
                            "runtime_type": "io.containerd.runc.v2",
                            "options": {
                                # No systemd as PID 1: cgroupfs paths, as the kubelet uses.
                                "SystemdCgroup": False,
                                "Root": str(layout.runc_root),
                            },
                        }
                    },
                },
                "registry": {"config_path": ""},
            },
            "io.containerd.internal.v1.opt": {
                "path": str(layout.component_dir("containerd") / "opt")
            },
        },
    }


def kubelet_config(
    layout: NodeLayout, network: NodeNetwork, cgroup_root: str, ca_file: Path
) -> dict[str, Any]:
    """The kubelet's configuration for a cgroup v1 host without systemd."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": str(network.node_address),
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": str(network.node_address),
        "tlsCertFile": str(layout.cert("kubelet")),
        "tlsPrivateKeyFile": str(layout.key("kubelet")),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "cgroupDriver": "cgroupfs",
        # Pods' cgroups go under this name in every hierarchy, where clean-up finds them.
        "cgroupRoot": cgroup_root,
        "cgroupsPerQOS": True,
        # cgroup v1 is deprecated in the kubelet; this host has nothing else.
        "failCgroupV1": False,
        "failSwapOn": False,
        "podLogsDir": str(layout.pod_logs),
        "volumePluginDir": str(layout.component_dir("kubelet") / "volume-plugins"),
        "clusterDomain": "cluster.local",
        "resolvConf": "/etc/resolv.conf",
        "evictionHard": dict(EVICTION_HARD),
        # Image garbage collection would delete imported images, which nothing can pull back.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # Lowering an OOM score needs CAP_SYS_RESOURCE, which root lacks here.
        "oomScoreAdj": 0,
        "kernelMemcgNotification": False,
        "shutdownGracePeriod": "0s",
        "shutdownGracePeriodCriticalPods": "0s",
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "registerNode": True,
    }


def kube_proxy_config(network: NodeNetwork, node_name: str, kubeconfig: Path) -> dict[str, Any]:
    """kube-proxy in iptables mode, changing nothing outside the node's network namespace."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": node_name,
        "clusterCIDR": str(network.pod_subnet),
        "bindAddress": str(network.node_address),
        "healthzBindAddress": f"{network.node_address}:{KUBE_PROXY_HEALTHZ_PORT}",
        "metricsBindAddress": "127.0.0.1:10249",
        "oomScoreAdj": 0,
        # The conntrack table size and hash are global to the machine: leave them alone.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {"localhostNodePorts": False},
    }

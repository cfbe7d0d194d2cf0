"""A real Kubernetes control plane on this machine: etcd, kube-apiserver, kube-controller-manager.

The same code serves the test suite (one control plane per pytest session) and the local demo
(`python -m matchops_devenv cluster up`). Every start is a fresh cluster: new certificates, new
service-account keys, empty etcd. All state lives under one directory:

    <state>/
      owner                       pid and start time of the process that runs this cluster
      kubeconfig                  admin (system:masters), for people, tests and the operator
      pki/                        CA, serving and client certificates, service-account keys
      kubeconfigs/                one kubeconfig per component identity
      <component>/                working directory, <component>.log and <component>.pid
      etcd/data/                  etcd's data
      nodes/<node>/               reserved for node components (kubelet, containerd, kube-proxy)

etcd listens on loopback only and without TLS, as in controller-runtime's envtest: only the
API server talks to it. The API server's bind address is configurable so that pods on a bridge
network can reach it through the host's bridge address; its serving certificate is valid for
that address, loopback and the `kubernetes` Service.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import ssl
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from matchops_devenv import pki, procs, statedir, toolchain
from matchops_devenv.access import ClusterAccess
from matchops_devenv.kubeconfig import render_kubeconfig, write_kubeconfig
from matchops_devenv.ports import free_port

CLUSTER_NAME = "matchops"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")
PROGRAMS = (*COMPONENTS, "kubectl")


class ControlPlaneError(RuntimeError):
    """The control plane could not start, or its state directory is in use."""


@dataclass(frozen=True)
class ControlPlaneConfig:
    """What a cluster looks like from outside; every field has a working default."""

    # Where the API server listens. Loopback keeps it private to this machine; a bridge's host
    # address lets pods reach it; "0.0.0.0" listens everywhere.
    bind_address: str = "127.0.0.1"
    # The address the API server publishes in the `kubernetes` Service's endpoints; defaults to
    # the bind address (loopback when binding everywhere).
    advertise_address: str | None = None
    service_cidr: str = "10.96.0.0/12"
    # Pod network; the controller manager hands each node a slice of it. None: no allocation.
    cluster_cidr: str | None = "10.244.0.0/16"
    # More names or addresses for the API server's serving certificate.
    extra_sans: tuple[str, ...] = ()
    # 0 picks a free port.
    apiserver_port: int = 0
    start_timeout: float = 90.0

    @property
    def client_host(self) -> str:
        """The address clients on this machine dial."""
        if ipaddress.ip_address(self.bind_address).is_unspecified:
            return "127.0.0.1"
        return self.bind_address

    @property
    def advertised(self) -> str:
        return self.advertise_address or self.client_host


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int

    @classmethod
    def pick(cls, config: ControlPlaneConfig) -> Ports:
        return cls(
            etcd_client=free_port(),
            etcd_peer=free_port(),
            apiserver=config.apiserver_port or free_port(config.client_host),
            controller_manager=free_port(),
        )


@dataclass(frozen=True)
class Layout:
    """Paths inside a control plane's state directory."""

    root: Path

    @property
    def owner(self) -> Path:
        return self.root / statedir.OWNER_FILE

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def kubeconfigs(self) -> Path:
        return self.root / "kubeconfigs"

    @property
    def etcd_data(self) -> Path:
        return self.component_dir("etcd") / "data"

    @property
    def nodes(self) -> Path:
        return self.root / "nodes"

    def component_dir(self, component: str) -> Path:
        """A component's working directory, with its log and pid files."""
        return self.root / component

    def cert(self, name: str) -> Path:
        return self.pki / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.pki / f"{name}.key"

    def component_kubeconfig(self, component: str) -> Path:
        return self.kubeconfigs / f"{component}.kubeconfig"

    @property
    def service_account_key(self) -> Path:
        return self.pki / "service-account.key"

    @property
    def service_account_pub(self) -> Path:
        return self.pki / "service-account.pub"


def etcd_args(etcd: Path, layout: Layout, ports: Ports) -> list[str]:
    """etcd as a single-member cluster on loopback."""
    client = f"http://127.0.0.1:{ports.etcd_client}"
    peer = f"http://127.0.0.1:{ports.etcd_peer}"
    return [
        str(etcd),
        "--name=default",
        f"--data-dir={layout.etcd_data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=default={peer}",
        "--initial-cluster-state=new",
        # The cluster is thrown away on stop; skipping fsync makes every API write faster.
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def apiserver_args(
    apiserver: Path, layout: Layout, config: ControlPlaneConfig, ports: Ports
) -> list[str]:
    """kube-apiserver with client-certificate and service-account authentication, Node + RBAC."""
    args = [
        str(apiserver),
        f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
        f"--bind-address={config.bind_address}",
        f"--secure-port={ports.apiserver}",
        f"--advertise-address={config.advertised}",
        f"--service-cluster-ip-range={config.service_cidr}",
        f"--cert-dir={layout.pki}",
        f"--tls-cert-file={layout.cert('apiserver')}",
        f"--tls-private-key-file={layout.key('apiserver')}",
        f"--client-ca-file={layout.cert('ca')}",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={layout.service_account_pub}",
        f"--service-account-signing-key-file={layout.service_account_key}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        "--allow-privileged=true",
        f"--kubelet-client-certificate={layout.cert('apiserver-kubelet-client')}",
        f"--kubelet-client-key={layout.key('apiserver-kubelet-client')}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        # The aggregation layer's front proxy: extension API servers (metrics-server) and the
        # controller manager's delegated authentication trust requests it signs.
        f"--requestheader-client-ca-file={layout.cert('front-proxy-ca')}",
        f"--requestheader-allowed-names={pki.FRONT_PROXY_CLIENT.user}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={layout.cert('front-proxy-client')}",
        f"--proxy-client-key-file={layout.key('front-proxy-client')}",
        "--profiling=false",
    ]
    if ipaddress.ip_address(config.advertised).is_loopback:
        # The `kubernetes` Service's endpoints may not point at loopback, and the API server
        # refuses to start rather than publish one; with nothing to publish, publish nothing.
        args.append("--endpoint-reconciler-type=none")
    return args


def controller_manager_args(
    controller_manager: Path, layout: Layout, config: ControlPlaneConfig, ports: Ports
) -> list[str]:
    """kube-controller-manager running every default controller, each under its own account."""
    kubeconfig = layout.component_kubeconfig("kube-controller-manager")
    args = [
        str(controller_manager),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports.controller_manager}",
        f"--tls-cert-file={layout.cert('kube-controller-manager')}",
        f"--tls-private-key-file={layout.key('kube-controller-manager')}",
        f"--client-ca-file={layout.cert('ca')}",
        f"--cluster-name={CLUSTER_NAME}",
        # Garbage collection, Deployment/ReplicaSet, CronJob/Job, namespaces, service-account
        # tokens, node lifecycle and IPAM: the controllers a real cluster runs by default.
        "--controllers=*",
        "--use-service-account-credentials=true",
        # Each controller's own client is built with a token request; at the default 20 requests
        # a second the controllers start one by one over five seconds instead of at once.
        "--kube-api-qps=200",
        "--kube-api-burst=400",
        f"--service-account-private-key-file={layout.service_account_key}",
        f"--root-ca-file={layout.cert('ca')}",
        # Signs kubelet client and serving certificate requests once nodes join.
        f"--cluster-signing-cert-file={layout.cert('ca')}",
        f"--cluster-signing-key-file={layout.key('ca')}",
        f"--service-cluster-ip-range={config.service_cidr}",
        # One instance: electing a leader would only delay the controllers' start.
        "--leader-elect=false",
        "--profiling=false",
    ]
    if config.cluster_cidr is not None:
        args += [f"--cluster-cidr={config.cluster_cidr}", "--allocate-node-cidrs=true"]
    return args


def owner_pid(layout: Layout) -> int | None:
    """The pid of the live process that runs the cluster in `layout`, if there is one."""
    try:
        recorded = layout.owner.read_text()
    except OSError:
        return None
    return statedir.live_owner(recorded)


def shut_down(state_dir: Path, timeout: float = 60.0) -> bool:
    """Stop the cluster in `state_dir`: ask its owner to stop it, or reap what a crash left.

    True when something was running.
    """
    layout = Layout(state_dir.resolve())
    pid = owner_pid(layout)
    if pid is None:
        return bool(procs.reap_stale(layout.root))
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while owner_pid(layout) is not None:
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"process {pid} did not stop the cluster in {timeout:.0f}s")
        time.sleep(0.1)
    return True


class ControlPlane:
    """etcd, kube-apiserver and kube-controller-manager, started and stopped together."""

    def __init__(self, state_dir: Path, config: ControlPlaneConfig | None = None) -> None:
        self.layout = Layout(state_dir.resolve())
        self.config = config or ControlPlaneConfig()
        self.ports: Ports | None = None
        self.services: list[procs.Service] = []
        self._programs: dict[str, Path] = {}
        self._ca: pki.CertificateAuthority | None = None

    @property
    def server(self) -> str:
        """The API server's URL, as clients on this machine dial it."""
        if self.ports is None:
            raise ControlPlaneError("the control plane has not been started")
        return f"https://{_url_host(self.config.client_host)}:{self.ports.apiserver}"

    @property
    def access(self) -> ClusterAccess:
        """The admin kubeconfig, server URL and matching kubectl, for tests and people."""
        return ClusterAccess(self.layout.kubeconfig, self.server, self.program("kubectl"))

    def program(self, name: str) -> Path:
        """The path of one of the cluster's programs (built or found by `start`)."""
        if name not in self._programs:
            self._programs.update(toolchain.programs(name))
        return self._programs[name]

    def start(self) -> None:
        """Start a fresh cluster and return once the API server and controllers are ready."""
        self._claim()
        try:
            self._programs.update(toolchain.programs(*PROGRAMS))
            self.ports = Ports.pick(self.config)
            self._write_credentials()
            self._start_components()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every component (controllers first, etcd last) and release the state directory."""
        for service in reversed(self.services):
            service.stop(timeout=10)
        self.services.clear()
        if owner_pid(self.layout) == os.getpid():
            self.layout.owner.unlink(missing_ok=True)

    def failed(self) -> procs.Service | None:
        """The first component that has exited on its own, if any."""
        return next((service for service in self.services if not service.running()), None)

    def pids(self) -> list[int]:
        """Process ids of the running components."""
        return [service.process.pid for service in self.services if service.process is not None]

    @property
    def certificate_authority(self) -> pki.CertificateAuthority:
        """The cluster's CA, for the certificates of components added later (a node's kubelet)."""
        if self._ca is None:
            raise ControlPlaneError("the control plane has not been started")
        return self._ca

    def write_kubeconfig(
        self,
        identity: pki.Identity,
        path: Path,
        *,
        server: str | None = None,
        tls_server_name: str | None = None,
    ) -> Path:
        """A kubeconfig that authenticates as `identity`, for a component or node added later.

        `server` overrides the API server URL, for clients that reach it by another address;
        `tls_server_name` then names what the serving certificate is checked against.
        """
        ca = self.certificate_authority
        config = render_kubeconfig(
            server=server or self.server,
            ca_pem=ca.key_pair.cert_pem,
            client=ca.issue_client(identity),
            cluster=CLUSTER_NAME,
            user=identity.user,
            tls_server_name=tls_server_name,
        )
        return write_kubeconfig(path, config)

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _claim(self) -> None:
        """Own the state directory, clearing what an earlier run left in it.

        A directory this process already owns (one from `statedir.claim`) is taken as it is.
        """
        if self.services:
            raise ControlPlaneError(f"the cluster in {self.layout.root} is running already")
        owner = owner_pid(self.layout)
        if owner not in (None, os.getpid()):
            raise ControlPlaneError(
                f"a cluster in {self.layout.root} is already run by process {owner};"
                " stop it first (`python -m matchops_devenv cluster down`)"
            )
        procs.reap_stale(self.layout.root)
        layout = self.layout
        for stale in (layout.pki, layout.kubeconfigs, *map(layout.component_dir, COMPONENTS)):
            shutil.rmtree(stale, ignore_errors=True)
        layout.nodes.mkdir(parents=True, exist_ok=True)
        layout.owner.write_text(statedir.identity(os.getpid()) + "\n")

    def _write_credentials(self) -> None:
        layout, config = self.layout, self.config
        ca = self._ca = pki.CertificateAuthority.create()
        ca.key_pair.write(layout.pki, "ca")
        sans = pki.apiserver_sans(
            [config.bind_address, config.advertised], config.service_cidr, config.extra_sans
        )
        ca.issue_serving("kube-apiserver", sans).write(layout.pki, "apiserver")
        ca.issue_client(pki.APISERVER_KUBELET_CLIENT).write(layout.pki, "apiserver-kubelet-client")
        front_proxy = pki.CertificateAuthority.create("matchops-front-proxy-ca")
        front_proxy.key_pair.write(layout.pki, "front-proxy-ca")
        front_proxy.issue_client(pki.FRONT_PROXY_CLIENT).write(layout.pki, "front-proxy-client")
        loopback = pki.apiserver_sans([], config.service_cidr)
        ca.issue_serving("kube-controller-manager", loopback).write(
            layout.pki, "kube-controller-manager"
        )
        pki.SigningKey.create().write(layout.pki)
        admin = ca.issue_client(pki.ADMIN)
        admin.write(layout.pki, "admin")
        write_kubeconfig(
            layout.kubeconfig,
            render_kubeconfig(
                server=self.server,
                ca_pem=ca.key_pair.cert_pem,
                client=admin,
                cluster=CLUSTER_NAME,
                user=pki.ADMIN.user,
            ),
        )
        self.write_kubeconfig(
            pki.CONTROLLER_MANAGER, layout.component_kubeconfig("kube-controller-manager")
        )

    def _service(self, name: str, argv: list[str]) -> procs.Service:
        directory = self.layout.component_dir(name)
        service = procs.Service(name, argv, directory, cwd=directory)
        self.services.append(service)
        service.start()
        return service

    def _start_components(self) -> None:
        assert self.ports is not None
        layout, config, ports = self.layout, self.config, self.ports
        timeout = config.start_timeout
        etcd = self._service("etcd", etcd_args(self._programs["etcd"], layout, ports))
        # Started beside etcd: it retries its etcd connection, and its own start-up overlaps
        # etcd's first election.
        apiserver = self._service(
            "kube-apiserver",
            apiserver_args(self._programs["kube-apiserver"], layout, config, ports),
        )
        etcd.wait_ready(lambda: answers_ok(f"http://127.0.0.1:{ports.etcd_client}/health"), timeout)
        admin_tls = self.client_tls()
        apiserver.wait_ready(lambda: answers_ok(f"{self.server}/readyz", admin_tls), timeout)
        # Only now: the controller manager exits at once when its RBAC roles, which /readyz
        # waits for, are not bootstrapped yet.
        controller_manager = self._service(
            "kube-controller-manager",
            controller_manager_args(
                self._programs["kube-controller-manager"], layout, config, ports
            ),
        )
        controller_manager.wait_ready(
            lambda: answers_ok(f"https://127.0.0.1:{ports.controller_manager}/healthz", admin_tls),
            timeout,
        )
        # Healthy is not yet running: the `default` ServiceAccount appears once the controllers
        # are, and pods (of Jobs, ReplicaSets) cannot be created in a namespace without it.
        controller_manager.wait_ready(
            lambda: answers_ok(
                f"{self.server}/api/v1/namespaces/default/serviceaccounts/default", admin_tls
            ),
            timeout,
        )

    def client_tls(self, client: str = "admin") -> ssl.SSLContext:
        """TLS for clients of the cluster's servers: its CA, and `client`'s certificate."""
        context = ssl.create_default_context(cafile=str(self.layout.cert("ca")))
        context.load_cert_chain(self.layout.cert(client), self.layout.key(client))
        return context


def answers_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    """Whether `url` answers 200 (errors raise, and `Service.wait_ready` polls on)."""
    # The URLs are built by the environment from the components' own addresses, never taken
    # from input.
    with urllib.request.urlopen(url, timeout=1, context=context) as response:  # noqa: S310
        return bool(response.status == 200)

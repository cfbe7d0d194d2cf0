"""How long the local cluster takes to get a Ready node, and to go away again.

    uv run python bench/node_startup.py [--runs 3] [--cold]

Each run starts a fresh control plane and node (with the project image) in a directory of
its own, waits for the node to be Ready and a pod of the project image to run, then stops
both. `--cold` first removes the containerd image stores, so the first run imports the
images again (what a changed image costs); the others reuse the store it made. Needs root.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml
from matchops_devenv import containerd, images
from matchops_devenv.controlplane import ControlPlane
from matchops_devenv.node import Node

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "probe", "namespace": "default"},
    "spec": {
        "containers": [
            {
                "name": "probe",
                "image": images.PROJECT_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["matchops-worker", "--help"],
            }
        ],
        "restartPolicy": "Never",
    },
}


def one_run(directory: Path) -> dict[str, float]:
    figures: dict[str, float] = {}
    started = time.monotonic()
    plane = ControlPlane(directory / "cluster")
    plane.start()
    figures["control plane"] = time.monotonic() - started
    node = Node(plane, nodes_root=directory / "nodes")
    try:
        node.start()
        figures.update({f"node: {k}": v for k, v in node.timings.phases.items()})
        figures["cluster with Ready node"] = time.monotonic() - started
        pod_started = time.monotonic()
        plane.access.kubectl("apply", "-f", "-", input=yaml.safe_dump(POD))
        plane.access.kubectl(
            "wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/probe", "--timeout=120s"
        )
        figures["first pod of the project image, created to succeeded"] = (
            time.monotonic() - pod_started
        )
    finally:
        stopping = time.monotonic()
        node.stop()
        figures["node stop"] = time.monotonic() - stopping
        stopping = time.monotonic()
        plane.stop()
        figures["control plane stop"] = time.monotonic() - stopping
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="re-import the images first")
    args = parser.parse_args()
    if args.cold:
        containerd.remove_seeds()
    runs = []
    for number in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="matchops-bench-") as directory:
            figures = one_run(Path(directory))
        runs.append(figures)
        print(f"run {number}:")
        for name, seconds in figures.items():
            print(f"  {name:<55} {seconds:6.2f} s")
    if len(runs) > 1:
        print(f"median of {len(runs)} runs:")
        for name in runs[-1]:
            values = [run[name] for run in runs if name in run]
            print(f"  {name:<55} {statistics.median(values):6.2f} s")


if __name__ == "__main__":
    main()

"""`python -m matchops_devenv`: the local environment's command line."""

from __future__ import annotations

import argparse
import sys

from matchops_devenv import cluster, demo, demo_cluster, images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m matchops_devenv",
        description="The local environment shared by the test suite and the demo.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    cluster.register(commands)
    demo.register(commands)
    demo_cluster.register(commands)
    images.register(commands)
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

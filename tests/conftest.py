"""Session fixtures shared by the whole suite live in matchops_devenv's pytest plugins."""

pytest_plugins = [
    "matchops_devenv.pytest_services",
    "matchops_devenv.pytest_cluster",
    "matchops_devenv.pytest_e2e",
]

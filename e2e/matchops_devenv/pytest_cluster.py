"""pytest fixtures: one real Kubernetes control plane per test session."""

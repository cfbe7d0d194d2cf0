"""matchops_worker."""

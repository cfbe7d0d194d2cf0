"""matchops_operator."""

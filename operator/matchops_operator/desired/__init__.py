"""Pure builders: a MatchIngestion spec in, the objects the cluster and broker should hold out."""

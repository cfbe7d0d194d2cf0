"""pytest fixtures: one real RabbitMQ node and one real PostgreSQL server per test session."""

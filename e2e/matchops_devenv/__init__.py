"""Local environment for tests and the demo: real RabbitMQ, PostgreSQL and Kubernetes."""

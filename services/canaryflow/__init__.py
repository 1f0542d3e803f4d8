"""canaryflow: event-driven canary releases for Kubernetes over NATS JetStream."""

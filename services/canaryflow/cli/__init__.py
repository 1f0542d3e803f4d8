"""The ``canaryflow`` command: request, follow and steer releases, speaking only NATS."""

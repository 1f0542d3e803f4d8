"""The demo and the tooling it shares with the end-to-end tests.

``launcher`` runs the four services as real processes; ``shop`` puts a sample service (a
Deployment behind a Service, with real users) and its ReleasePolicy into a namespace.
"""

"""The small runtime every canaryflow service shares: settings, the bus, state, telemetry.

Services import this and ``canaryflow_contracts``, never each other.
"""

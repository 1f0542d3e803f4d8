"""The web view: every release, live, with its verdicts plotted (``python -m canaryflow.ui``).

A fifth process beside the four services, independent of them: it reads the events stream and
the planner's release state and publishes operator commands as the CLI does; it never writes
Kubernetes nor the state. ``docs/web.md`` says how to run it and how it tells who you are.
"""

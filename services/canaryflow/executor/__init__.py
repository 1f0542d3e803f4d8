"""The executor: every forward write to Kubernetes (canary, traffic split, promotion).

It is the only service that moves a release forward in the cluster, and it reports a step
only once the API shows it in place, so the planner never advances on an intent.
"""

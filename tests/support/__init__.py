"""Helpers shared by the tests that run against the real local stack.

Why a package of its own: every stack test needs the same few things (poll until a condition
holds, with a timeout and a message that says what was last seen; query Prometheus and
Jaeger; make a least-privilege Kubernetes token), and they must behave the same everywhere,
so no test sleeps blindly or invents its own polling loop.
"""

from tests.support import chart
from tests.support.jaeger import JaegerQuery
from tests.support.kube import client_with_token, kubeconfig_with_token, narrow_token
from tests.support.prom import PrometheusQuery
from tests.support.stackenv import StackEnv
from tests.support.wait import async_wait_until, wait_until

__all__ = [
    "JaegerQuery",
    "PrometheusQuery",
    "StackEnv",
    "async_wait_until",
    "chart",
    "client_with_token",
    "kubeconfig_with_token",
    "narrow_token",
    "wait_until",
]

"""What a durable write costs: acknowledged publishes to a stream of ``--replicas`` copies.

canaryflow publishes every event and writes every state change through JetStream and waits
for the acknowledgement; on a three-node stack (``CANARYFLOW_NATS_NODES=3``) each is fsynced
on a majority before it is acknowledged (``sync_interval: always``, docs/operations.md
"JetStream for production"). This prints p50 and p99 of ``--count`` sequential publishes of
512 bytes to a scratch stream, on the stack's ``NATS_URL`` (all nodes). Replicas default to
the stack's ``CANARYFLOW_STREAM_REPLICAS``.

    .venv/bin/python bench/jetstream_publish.py [--count 500] [--replicas 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import nats
from nats.js.api import StreamConfig

from canaryflow.runtime.nats_access import NatsAccess

STREAM = "BENCH_PUBLISH"


async def measure(urls: list[str], replicas: int, count: int) -> list[float]:
    # TLS and the admin identity from the stack's environment (NATS_TLS_CA, NATS_NKEY_SEED).
    access = NatsAccess.from_env(None, dict(os.environ))
    connection = await nats.connect(servers=urls, **access.client_options())
    js = connection.jetstream()
    try:
        await js.add_stream(
            StreamConfig(name=STREAM, subjects=["bench.publish.>"], num_replicas=replicas)
        )
        body = b"x" * 512
        millis = []
        for _ in range(count):
            started = time.perf_counter()
            await js.publish("bench.publish.one", body)
            millis.append((time.perf_counter() - started) * 1000)
        return sorted(millis)
    finally:
        await js.delete_stream(STREAM)
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument(
        "--replicas", type=int, default=int(os.environ.get("CANARYFLOW_STREAM_REPLICAS", "1"))
    )
    args = parser.parse_args()
    urls = os.environ.get("NATS_URL", "tls://127.0.0.1:14222").split(",")
    millis = asyncio.run(measure(urls, args.replicas, args.count))
    p50, p99 = millis[len(millis) // 2], millis[int(len(millis) * 0.99) - 1]
    print(
        f"{len(urls)} node(s), R{args.replicas}: {args.count} acknowledged publishes of 512 B, "
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )


if __name__ == "__main__":
    main()

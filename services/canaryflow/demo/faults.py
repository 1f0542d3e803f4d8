"""Breaking a running canaryflow on purpose: kill a service at a chosen moment, watch traffic.

Why here, next to the launcher: the end-to-end tests and the restart benchmark both kill
real service processes (SIGKILL, no cleanup) at the moment one handles a given release, and
time what users would see, so the way they find that moment and measure it must be the same.

The moment comes from the service's own JSON log: the first line a replica writes about a
release (each line carries its ``release_id``) with a given message, read every 20 ms.
Traffic is what the target's Service spreads requests over: its Ready pods, by track.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client

from canaryflow.demo.launcher import RunningService, ServiceLauncher
from canaryflow.runtime.conventions import TRACK_LABEL

LOG_POLL_SECONDS = 0.02
TRAFFIC_POLL_SECONDS = 0.05


@dataclass
class LogWatch:
    """New lines of every replica's log, each read once, from where the last look stopped."""

    launcher: ServiceLauncher
    offsets: dict[Path, int] = field(default_factory=dict)

    def _new_lines(self, path: Path) -> list[str]:
        with path.open("rb") as log:
            log.seek(self.offsets.get(path, 0))
            data = log.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line being written waits for the next look
        self.offsets[path] = self.offsets.get(path, 0) + len(complete)
        return complete.decode(errors="replace").splitlines()

    async def first(
        self, name: str, release_id: str, message: str, timeout: float = 120
    ) -> RunningService:
        """The replica of ``name`` that first logs a line starting with ``message`` about
        ``release_id``."""
        tag = f'"release_id": "{release_id}"'
        marker = f'"msg": "{message}'
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for replica in self.launcher.replicas_of(name):
                lines = self._new_lines(replica.log_path)
                if any(tag in line and marker in line for line in lines):
                    return replica
            await asyncio.sleep(LOG_POLL_SECONDS)
        logs = ", ".join(str(r.log_path) for r in self.launcher.replicas_of(name))
        raise TimeoutError(
            f"no {name} replica logged {message!r} for {release_id} within {timeout:.0f}s "
            f"(logs: {logs}); what every service logged about it last:\n"
            + "\n".join(self.release_story(release_id))
        )

    def release_story(self, release_id: str, last: int = 25) -> list[str]:
        """The last lines any replica (killed ones too) logged about ``release_id``, in time
        order: what a failure message needs when the awaited line never came."""
        tag = f'"release_id": "{release_id}"'
        lines = [
            f"{path.stem}: {line}"
            for path in sorted(self.launcher.log_dir.glob("*.log"))
            for line in path.read_text(errors="replace").splitlines()
            if tag in line
        ]
        # Every line starts with its ISO time, so the text after the file name sorts by time.
        lines.sort(key=lambda line: line.split(": ", 1)[1])
        return lines[-last:]


async def kill(launcher: ServiceLauncher, replica: RunningService) -> float:
    """SIGKILL ``replica``. If it was its service's only one, start another at once, as a
    supervisor would. Returns the wall-clock time of the kill."""
    launcher.kill(replica)
    killed_at = time.time()
    if not launcher.replicas_of(replica.name):
        await asyncio.to_thread(launcher.start, (replica.name,), 60, 1)
    return killed_at


def ready_pods_by_track(api: client.ApiClient, namespace: str, selector: str) -> dict[str, int]:
    """What the target's Service spreads traffic over: Ready pods, by track label."""
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector)
    counts: dict[str, int] = {}
    for pod in pods.items:
        if pod.metadata.deletion_timestamp is not None:
            continue
        ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        if ready:
            track = (pod.metadata.labels or {}).get(TRACK_LABEL, "stable")
            counts[track] = counts.get(track, 0) + 1
    return counts


@dataclass(frozen=True)
class Sample:
    at: float  # wall clock, comparable with the envelopes' times on the same machine
    ready: dict[str, int]


@contextlib.asynccontextmanager
async def traffic(
    api: client.ApiClient, namespace: str, selector: str
) -> AsyncIterator[list[Sample]]:
    """Ready pods by track, sampled every 50 ms while the block runs."""
    samples: list[Sample] = []

    async def sample() -> None:
        while True:
            ready = await asyncio.to_thread(ready_pods_by_track, api, namespace, selector)
            samples.append(Sample(time.time(), ready))
            await asyncio.sleep(TRAFFIC_POLL_SECONDS)

    task = asyncio.create_task(sample())
    try:
        yield samples
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def back_on_stable_since(samples: list[Sample], size: int) -> float:
    """When all traffic went back to ``size`` Ready stable pods, for good (the samples end
    there); raises ``ValueError`` if the last sample is not there yet."""
    whole = {"stable": size}
    if not samples or samples[-1].ready != whole:
        last = samples[-1].ready if samples else "no sample"
        raise ValueError(f"traffic is not back on {size} stable pods: last seen {last}")
    since = samples[-1].at
    for sample in reversed(samples):
        if sample.ready != whole:
            break
        since = sample.at
    return since

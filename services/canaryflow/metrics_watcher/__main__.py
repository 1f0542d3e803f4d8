"""``python -m canaryflow.metrics_watcher``: the metrics-watcher as a process."""

from __future__ import annotations

from canaryflow.metrics_watcher.app import SERVICE_NAME, build_service
from canaryflow.runtime.service import main

if __name__ == "__main__":
    # httpx logs every request at INFO: several lines per tick that say nothing a verdict
    # does not say better.
    main(SERVICE_NAME, build_service, quiet=("httpx",))

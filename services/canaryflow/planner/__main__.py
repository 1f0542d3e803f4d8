"""``python -m canaryflow.planner``: the planner as a process."""

from __future__ import annotations

from canaryflow.planner.app import SERVICE_NAME, build_service
from canaryflow.runtime.service import main

if __name__ == "__main__":
    main(SERVICE_NAME, build_service)

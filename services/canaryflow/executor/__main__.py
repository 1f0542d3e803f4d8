"""``python -m canaryflow.executor``: the executor as a process."""

from __future__ import annotations

import asyncio

from canaryflow.executor.app import SERVICE_NAME, build_service
from canaryflow.runtime.service import run_service
from canaryflow.runtime.settings import Settings


async def main() -> None:
    await run_service(build_service(Settings.from_env(SERVICE_NAME)))


if __name__ == "__main__":
    asyncio.run(main())

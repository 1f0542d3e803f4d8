"""One JSON object per line on stderr, so the stack's log folder can be searched by field.

The simulator runs unattended next to a dozen other servers; when a test sees odd rates, the
first question is what split and behaviour the simulator believed, and grep plus jq over
these lines answers it.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

LOGGER_NAME = "canaryflow.simulator"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = dict(getattr(record, "fields", None) or {})
        if record.name != LOGGER_NAME:
            fields.setdefault("logger", record.name)
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        stamp = datetime.fromtimestamp(record.created, tz=UTC)
        payload = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            "fields": fields,
        }
        return json.dumps(payload, default=str, sort_keys=False)


def configure(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The Kubernetes client logs every retry of its connection pool at WARNING with a stack
    # of context; our own error line per failed round says the same once.
    logging.getLogger("urllib3").setLevel(logging.ERROR)


class Log:
    """A logger whose calls take the structured fields as keyword arguments."""

    def __init__(self, name: str = LOGGER_NAME) -> None:
        self._logger = logging.getLogger(name)
        self._once: set[tuple[str, ...]] = set()

    def debug(self, msg: str, **fields: Any) -> None:
        self._logger.debug(msg, extra={"fields": fields})

    def info(self, msg: str, **fields: Any) -> None:
        self._logger.info(msg, extra={"fields": fields})

    def warning(self, msg: str, **fields: Any) -> None:
        self._logger.warning(msg, extra={"fields": fields})

    def error(self, msg: str, exc_info: bool = False, **fields: Any) -> None:
        self._logger.error(msg, exc_info=exc_info, extra={"fields": fields})

    def warning_once(self, key: tuple[str, ...], msg: str, **fields: Any) -> None:
        """Warn about a configuration problem once, not at every refresh while it lasts."""
        if key in self._once:
            return
        self._once.add(key)
        self.warning(msg, **fields)

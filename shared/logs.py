"""JSON log lines carrying the current request id, actor, service and trace (ids)."""

import json
import logging
import os
import sys
import time
from datetime import UTC, datetime

from shared import context, tracing

__all__ = ["JsonFormatter", "ContextFilter", "configure", "LOGGING"]

_SKIP = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id", "actor",
                                                 "service", "trace_id", "span_id"}


class ContextFilter(logging.Filter):
    """Stamp each record with the request id, actor and span (trace and span ids) bound to
    the running greenthread or thread."""

    def __init__(self, service=None):
        super().__init__()
        self.service = service or os.environ.get("PLINTH_SERVICE", "")

    def filter(self, record):
        request_id, actor = context.current()
        record.request_id = getattr(record, "request_id", None) or request_id
        record.actor = actor.to_dict() if actor else None
        record.service = self.service
        record.trace_id, record.span_id = tracing.current_ids()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record):
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "service": getattr(record, "service", ""),
            "request_id": getattr(record, "request_id", None),
            "actor": getattr(record, "actor", None),
            "trace_id": getattr(record, "trace_id", None),
            "span_id": getattr(record, "span_id", None),
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _SKIP and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "shared.logs.ContextFilter"}},
    "formatters": {"json": {"()": "shared.logs.JsonFormatter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
            "formatter": "json",
            "filters": ["context"],
        }
    },
    "root": {"level": os.environ.get("LOG_LEVEL", "INFO"), "handlers": ["console"]},
    "loggers": {"nameko": {"level": "WARNING"}, "kombu": {"level": "WARNING"},
                "amqp": {"level": "WARNING"}, "alembic": {"level": "WARNING"}},
}


def configure(level=None, stream=sys.stderr):
    """Configure JSON logging for a process that nameko does not configure (tools, scripts)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("LOG_LEVEL", "INFO"))
    logging.Formatter.converter = time.gmtime

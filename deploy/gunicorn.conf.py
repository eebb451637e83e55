"""gunicorn settings for the gateway: ``gunicorn -c deploy/gunicorn.conf.py``.

Everything comes from the environment:
``GATEWAY_BIND`` (127.0.0.1:8000), ``GATEWAY_WORKERS`` (2), ``GATEWAY_THREADS`` (8),
``GATEWAY_TIMEOUT`` (30 s), ``GATEWAY_GRACEFUL_TIMEOUT`` (10 s), ``GATEWAY_KEEPALIVE`` (5 s),
``GATEWAY_MAX_REQUESTS`` (0: never recycle workers), ``LOG_LEVEL`` (INFO) and
``PROMETHEUS_MULTIPROC_DIR`` (var/prometheus-gateway: emptied at start, so /metrics counts
this server's workers only; each server needs its own). The gateway's own settings are in
config/gateway.yaml.

gthread workers (gunicorn 27 has no eventlet worker, and the gateway does not monkey-patch):
each worker process holds one shared RPC client and one authz event listener, created after
the fork. Access logging is the app's (one JSON line per request on ``gateway.access``);
gunicorn's own access log is off, and every log line is JSON on stderr.
"""

import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

from gunicorn import glogging

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _env(name, default, cast=str):
    value = os.environ.get(name, "")
    return cast(value) if value.strip() else default


# nameko (imported for its error types) imports eventlet, which announces its deprecation; the
# gateway does not use eventlet
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

# The multiprocess directory must be in the environment before any worker imports
# prometheus_client, which reads it at import.
PROMETHEUS_DIR = Path(os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", str(ROOT / "var" / "prometheus-gateway")))

wsgi_app = "gateway.wsgi:app"
bind = _env("GATEWAY_BIND", "127.0.0.1:8000").split(",")
workers = _env("GATEWAY_WORKERS", 2, int)
threads = _env("GATEWAY_THREADS", 8, int)
worker_class = "gthread"
timeout = _env("GATEWAY_TIMEOUT", 30, int)
graceful_timeout = _env("GATEWAY_GRACEFUL_TIMEOUT", 10, int)
keepalive = _env("GATEWAY_KEEPALIVE", 5, int)
max_requests = _env("GATEWAY_MAX_REQUESTS", 0, int)
max_requests_jitter = max_requests // 10
preload_app = False  # each worker builds its app, clients and threads after the fork
control_socket_disable = True  # several gateways may run on one machine
proc_name = "plinth-gateway"
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
forwarded_allow_ips = _env("GATEWAY_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

class _Logger(glogging.Logger):
    """gunicorn's logger, building no access-log line nobody will see.

    With ``logconfig_dict`` set, gunicorn formats every request's access atoms even though
    its access log is off (``gunicorn.access`` is at WARNING): several per cent of a worker's
    CPU. The gateway writes its own access line (``gateway.access``).
    """

    @property
    def access_log_enabled(self):
        return self.access_log.isEnabledFor(logging.INFO) and super().access_log_enabled


logger_class = _Logger
accesslog = None
errorlog = "-"
loglevel = _env("LOG_LEVEL", "info").lower()
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "shared.logs.ContextFilter", "service": "gateway"}},
    "formatters": {"json": {"()": "shared.logs.JsonFormatter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                    "formatter": "json", "filters": ["context"]},
    },
    "root": {"level": loglevel.upper(), "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": loglevel.upper(), "handlers": ["console"],
                           "propagate": False},
        "gunicorn.access": {"level": "WARNING", "handlers": ["console"], "propagate": False},
        "kombu": {"level": "WARNING"},
        "amqp": {"level": "WARNING"},
    },
}


def _hide_server_version():
    """gunicorn names itself in every response's Server header; say only what this is."""
    from shared import compat

    compat.set_server_name("plinth")


_hide_server_version()


def _problem_error_pages():
    """gunicorn answers a request it cannot parse (400 bad request line, 414, 431 headers too
    large...) itself, with a small HTML page and none of the gateway's headers: answer those
    as problem+json with the same security headers (gateway.headers.raw_problem).

    (shared.compat guards the patch: it fails at start if a gunicorn release changes it).
    """
    from gunicorn import util

    from gateway import settings as gateway_settings
    from gateway.headers import raw_problem
    from shared import compat

    hsts = gateway_settings.load().get_as("HSTS_SECONDS", int) or 0

    def write_error(sock, status_int, reason, mesg):
        util.write_nonblock(sock, raw_problem(status_int, reason, mesg, hsts))

    compat.replace_error_writer(write_error)


_problem_error_pages()


def on_starting(server):
    """Empty the metrics directory: files of a previous run would be counted again."""
    if PROMETHEUS_DIR.exists():
        shutil.rmtree(PROMETHEUS_DIR)
    PROMETHEUS_DIR.mkdir(parents=True, exist_ok=True)


def post_fork(server, worker):
    """Tracing (its export queue and thread) is made in each worker, never in the arbiter:
    neither survives a fork. The app (built next, in the worker) finds it set up."""
    from gateway import metrics
    from shared import tracing

    tracing.setup("gateway", on_drop=metrics.trace_spans_dropped)


def post_worker_init(worker):
    """Connect to the broker, load auth's keys and start listening to authz's events before
    taking requests (best effort: what fails here is retried on demand)."""
    app = getattr(worker, "wsgi", None)
    if app is not None and "plinth" in getattr(app, "extensions", {}):
        import time

        from gateway.app import warm_up

        started = time.monotonic()
        keys = False
        try:
            keys = warm_up(app)
        except Exception as exc:  # noqa: BLE001 - the app retries at its first request
            worker.log.warning("gateway warm-up failed: %s: %s", type(exc).__name__, exc)
        # one line per worker, once it takes requests: readiness probes reach only one of them
        worker.log.info("gateway worker ready", extra={
            "event": "worker_ready", "pid": worker.pid, "keys_loaded": bool(keys),
            "warm_up_ms": round((time.monotonic() - started) * 1000, 1)})


def worker_exit(server, worker):
    from shared import tracing

    tracing.shutdown()  # export the spans still queued (bounded by the exporter's timeout)
    app = getattr(worker, "wsgi", None)
    state = getattr(app, "extensions", {}).get("plinth") if app is not None else None
    if state is not None:
        state.close()


def child_exit(server, worker):
    """A dead worker's live gauges must not be reported any more."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)

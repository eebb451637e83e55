"""The gateway on stock nameko proxies, for gunicorn: ``tests.bench.nameko_wsgi:app``."""

from gateway import create_app
from tests.bench.nameko_backend import install

app = install(create_app())

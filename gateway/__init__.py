"""The gateway: one HTTP entry point for the whole platform (README, "The gateway").

``create_app(config=None)`` builds the Flask app; gunicorn serves ``gateway.wsgi:app`` with
deploy/gunicorn.conf.py. One module per concern: ``routes`` (the route table), ``dispatch``
(a route entry as a view), ``rpc`` (the client pool), ``security`` (JWT and JWKS),
``authz_cache`` (permissions kept current by authz's events), ``limits`` (rate limiting),
``headers`` (CORS and security headers), ``errors`` (problem+json), ``observability``
(request ids, access log), ``metrics`` (Prometheus), ``openapi`` (spec and docs), ``health``.
"""

from gateway.app import create_app

__all__ = ["create_app"]

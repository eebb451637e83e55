"""CORS (flask-cors) and the security headers every response carries, gunicorn's own error
pages included."""

import json
import re
import uuid

from flask import request
from flask_cors import CORS

from gateway.errors import PROBLEM_MIME, problem_document

__all__ = ["setup_cors", "security_headers", "static_headers", "raw_problem", "API_CSP",
           "DOCS_CSP", "STATUS_CSP"]

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
# the docs page: Swagger UI's own script and styles from this origin only (it sets inline
# style attributes, hence 'unsafe-inline' for styles alone)
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; font-src 'self'; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")

# the status page: its own script and stylesheet, and /status.json
STATUS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
              "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
              "form-action 'none'")

CORS_PATHS = ("/api/", "/.well-known/")
EXPOSED = ["X-Request-ID", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset",
           "RateLimit-Policy", "Retry-After", "Location", "WWW-Authenticate"]


def setup_cors(app, settings):
    """CORS for the configured origins only; with none configured, no CORS headers at all."""
    origins = settings.get_list("CORS_ORIGINS")
    if not origins:
        return None
    options = {
        "origins": origins,
        "methods": settings.get_list("CORS_METHODS"),
        "allow_headers": settings.get_list("CORS_HEADERS"),
        "expose_headers": EXPOSED,
        "max_age": settings.get_as("CORS_MAX_AGE", int),
        "supports_credentials": False,
        "vary_header": True,
    }

    # flask-cors says Vary: Origin only when several origins are configured, yet with one
    # the answer still depends on the Origin header (allowed or not): without Vary a shared
    # cache could serve one origin's answer to another (the JWKS are cacheable)
    @app.after_request
    def vary_by_origin(response):
        if request.path.startswith(CORS_PATHS):
            response.vary.add("Origin")
        return response

    return CORS(app, resources={r"/api/*": options, r"/.well-known/*": options})


def static_headers(hsts_seconds=0):
    """The headers every response carries whatever it is: (name, value) pairs."""
    always = [("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
              ("Referrer-Policy", "no-referrer"), ("Cross-Origin-Opener-Policy", "same-origin")]
    if hsts_seconds:
        always.append(("Strict-Transport-Security",
                       f"max-age={hsts_seconds}; includeSubDomains"))
    return always


def raw_problem(status, reason, detail, hsts_seconds=0):
    """A whole HTTP/1.1 response, as bytes, for a request gunicorn refuses itself (a bad request
    line, headers too large...) before any app sees it: problem+json with the headers the app
    would have sent (deploy/gunicorn.conf.py installs it)."""
    request_id = str(uuid.uuid4())
    body = json.dumps(problem_document(status, reason, str(detail or reason)[:300],
                                       request_id=request_id)).encode()
    headers = [("Connection", "close"), ("Content-Type", PROBLEM_MIME),
               ("Content-Length", str(len(body))), *static_headers(hsts_seconds),
               ("Cache-Control", "no-store"), ("Content-Security-Policy", API_CSP),
               ("X-Request-ID", request_id)]
    reason = re.sub(r"[^ -~]", "", str(reason)) or "Error"  # no CR, LF or non-ASCII
    head = f"HTTP/1.1 {int(status)} {reason}\r\n" + \
        "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
    return head.encode("latin-1") + body


def security_headers(hsts_seconds=0):
    always = static_headers(hsts_seconds)

    def add(response):
        headers = response.headers
        headers.extend(always)
        if "Cache-Control" not in headers:
            headers["Cache-Control"] = "no-store"
        if "Content-Security-Policy" not in headers:
            path = request.path
            if path == "/docs" or path.startswith("/docs/"):
                headers["Content-Security-Policy"] = DOCS_CSP
            elif path == "/status" or path.startswith("/status/"):
                headers["Content-Security-Policy"] = STATUS_CSP
            else:
                headers["Content-Security-Policy"] = API_CSP
        return response

    return add

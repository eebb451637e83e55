"""OpenAPI 3.1 generated from the route table's own marshmallow schemas (apispec), served at
``/openapi.json``, and ``/docs``: Swagger UI from the flask-swagger-ui package's files,
served by the gateway itself, so it works with no internet access."""

import json
import os
from importlib.util import find_spec

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Response, abort, render_template, send_from_directory

from gateway import schemas as s

__all__ = ["build_spec", "register", "API_VERSION"]

API_VERSION = os.environ.get("PLINTH_VERSION", "0.1.0")
STATIC = os.path.join(os.path.dirname(__file__), "static")
DOCS_FILES = {"plinth-docs.js"}


def _swagger_dist():
    spec = find_spec("flask_swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "dist")


def _resolver(schema):
    cls = schema if isinstance(schema, type) else type(schema)
    name = cls.__name__
    return name[:-6] if name.endswith("Schema") and len(name) > 6 else name


def _problem(description):
    return {"description": description,
            "content": {"application/problem+json": {"schema": "Problem"}}}


ERRORS = {
    400: "Invalid input: `errors` names each field and what is wrong with it",
    401: "Missing, invalid or expired access token (or wrong credentials)",
    403: "The caller lacks the permission",
    404: "Not found",
    409: "Conflict with the current state (e.g. the email is taken)",
    422: "Well-formed but refused (e.g. a role that does not exist)",
    413: "The body is too large",
    415: "The body is not JSON",
    429: "Rate limit exceeded: see Retry-After",
    503: "The service is unavailable: see Retry-After",
    504: "The service did not answer in time",
}


def _operation(route):
    operation = {
        "operationId": route.endpoint,
        "summary": route.summary or route.target,
        "tags": [route.tag or route.service],
        "parameters": [],
        "responses": {},
    }
    if route.path_params is not None:
        operation["parameters"].append({"in": "path", "schema": route.path_params})
    else:
        for name in route.path_names:
            operation["parameters"].append({"in": "path", "name": name, "required": True,
                                            "schema": {"type": "string"}})
    if route.query is not None:
        operation["parameters"].append({"in": "query", "schema": route.query})
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": route.body}},
        }
    success = {"description": "Success"}
    if route.stream:
        success["description"] = "Success: the body is streamed, its length declared"
        success["content"] = {route.stream: {"schema": {"type": "string"}}}
    elif route.status != 204:
        body_schema = route.response if route.response is not None else {}
        success["content"] = {"application/json": {"schema": body_schema}}
    operation["responses"][str(route.status)] = success
    if route.accepted:
        operation["responses"]["202"] = {
            "description": f"Accepted, still running: follow Location ({route.accepted})",
            "headers": {"Location": {"schema": {"type": "string"}}},
            "content": {"application/json": {"schema": route.accepted_response or {}}}}
    codes = [400, 401, 404, 409, 429, 503, 504]
    if not route.public or 403 in route.error_status.values():
        codes.append(403)
    if route.body is not None:
        codes += [413, 415]
    for code in sorted(set(codes) | set(route.error_status.values())):
        if 400 <= code < 600:
            operation["responses"][str(code)] = _problem(ERRORS.get(code, "Error"))
    if route.public:
        operation["security"] = []
    else:
        operation["description"] = ("Needs a bearer token"
                                     + (f" and the permission `{route.permission}`"
                                        f"{f' (scope {route.scope})' if route.scope else ''}."
                                        if route.needs_permission else "."))
    return operation


def build_spec(routes, title="Plinth API"):
    plugin = MarshmallowPlugin(schema_name_resolver=_resolver)
    spec = APISpec(
        title=title, version=API_VERSION, openapi_version="3.1.0", plugins=[plugin],
        info={"description": "The single HTTP entry point of the Plinth platform. Errors "
                             "are RFC 9457 problem details (application/problem+json)."},
    )
    plugin.map_to_openapi_type(s.Uuid, "string", "uuid")
    plugin.map_to_openapi_type(s.Timestamp, "string", "date-time")
    spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer",
                                                   "bearerFormat": "JWT"})
    spec.components.schema("Problem", schema=s.ProblemSchema)
    spec.options["security"] = [{"bearerAuth": []}]
    by_path = {}
    for route in routes:
        by_path.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    by_path.setdefault("/.well-known/jwks.json", {})["get"] = {
        "operationId": "jwks", "summary": "auth's public keys (JWKS) for access tokens",
        "tags": ["auth"], "security": [],
        "responses": {"200": {"description": "The key set",
                              "content": {"application/json": {"schema": s.JwksSchema}}},
                      "503": _problem(ERRORS[503])},
    }
    for path, operations in by_path.items():
        spec.path(path=path, operations=operations)
    document = spec.to_dict()
    document["security"] = [{"bearerAuth": []}]
    return document


def register(app, routes, docs=True):
    document = json.dumps(build_spec(routes), separators=(",", ":"))

    def openapi():
        return Response(document, mimetype="application/json",
                        headers={"Cache-Control": "no-cache"})

    app.add_url_rule("/openapi.json", "openapi", openapi, methods=["GET"])
    if not docs:
        return
    dist = _swagger_dist()

    def docs_page():
        if dist is None:
            abort(404)
        return render_template("docs.html", title="Plinth API")

    def docs_asset(filename):
        if filename in DOCS_FILES:
            return send_from_directory(STATIC, filename, max_age=300)
        if dist is None:
            abort(404)
        return send_from_directory(dist, filename, max_age=3600)

    app.add_url_rule("/docs", "docs", docs_page, methods=["GET"])
    app.add_url_rule("/docs/static/<path:filename>", "docs_asset", docs_asset,
                     methods=["GET"])

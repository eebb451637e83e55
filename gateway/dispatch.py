"""Turns a route-table entry into a Flask view: authenticate, authorise, validate, call, answer.

The same generic steps serve every entry, core or feature service, in this order:
0. the route class's rate limits (per IP, and per user with a valid token): 429;
1. the caller (a valid bearer token) unless the route is public: 401;
2. the route's permission from the authorisation cache: 403;
3. path parameters, query and JSON body through the route's schemas: 400 / 415;
4. one RPC to the route's target with the route's timeout, the request id and the actor;
5. the result through the response schema, with the route's success status; or, for a
   ``stream`` route, the first page's data and then each next page's, fetched while the
   body is sent (never the whole body in memory).
"""

import json
import logging

from flask import current_app, request, stream_with_context
from marshmallow import ValidationError, fields

from gateway import request_state
from gateway.errors import UnsupportedMediaType
from shared.actors import TOKEN_KEY
from shared.errors import Forbidden, Invalid, PlinthError, Unauthorized

__all__ = ["make_view", "rpc_context", "require_principal", "json_depth", "MAX_JSON_DEPTH"]

log = logging.getLogger("gateway.dispatch")
# a request body nested deeper is refused (400): no API takes more, and a body nested about a
# thousand deep would exhaust the parser's stack
MAX_JSON_DEPTH = 32


def rpc_context():
    """The nameko context data of this request: request id, actor, and the caller's access
    token as the actor's proof (each service verifies it itself: shared.actors)."""
    state = request_state.current()
    context = {"request_id": state.request_id}
    principal = state.principal
    if principal is not None:
        context["actor_id"] = principal.user_id
        context["actor_type"] = principal.actor_type
        context[TOKEN_KEY] = state.token
    return context


def require_principal():
    state = request_state.current()
    if state.principal is not None:
        return state.principal
    error = state.auth_error
    if error is not None:
        if isinstance(error, Unauthorized):
            state.token_rejected = True
        raise error
    raise Unauthorized("an access token is required (Authorization: Bearer <token>)",
                       {"reason": "missing"})


def _load(schema, data, where):
    if schema is None:
        return {}
    try:
        return schema.load(data)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        if where != "body":
            messages = {(k if k != "_schema" else f"_{where}"): v for k, v in messages.items()}
        names = ", ".join(sorted(map(str, messages)))
        raise Invalid(f"invalid {where}: {names}", messages) from None


def _query_values(schema):
    """The query string as a dict: list fields take every value, others the only one."""
    declared = schema.fields if schema is not None else {}
    values = {}
    for name in request.args:
        items = request.args.getlist(name)
        field = declared.get(name)
        if isinstance(field, fields.List):
            values[name] = items
        elif len(items) > 1:
            raise Invalid(f"invalid query: {name} given more than once",
                          {name: ["give it once"]})
        else:
            values[name] = items[0]
    return values


def json_depth(value):
    """How many arrays and objects deep a parsed JSON ``value`` is (walked without recursion)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in item
                       if isinstance(child, dict | list))
    return deepest


def _json_body():
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    if not request.is_json:
        raise UnsupportedMediaType("the body must be JSON (Content-Type: application/json)",
                                   {"content_type": request.content_type or ""})
    try:
        body = json.loads(raw)
        too_deep = json_depth(body) > MAX_JSON_DEPTH
    except RecursionError:  # deeper than the parser's stack allows: far deeper than we do
        too_deep = True
    except (ValueError, UnicodeDecodeError):
        raise Invalid("the body is not valid JSON", {"_body": ["not valid JSON"]}) from None
    if too_deep:
        raise Invalid(f"the body is nested more than {MAX_JSON_DEPTH} levels deep",
                      {"_body": [f"nested more than {MAX_JSON_DEPTH} levels deep"]})
    if not isinstance(body, dict):
        raise Invalid("the body must be a JSON object", {"_body": ["must be a JSON object"]})
    return body


def _pick(source, inputs, principal):
    if source in ("path", "query", "body"):
        return inputs[source]
    if source == "caller.id":
        return principal.user_id if principal else None
    if source == "caller.session":
        return principal.session_id if principal else None
    if source == "client":
        client = {"ip": request.remote_addr or "0.0.0.0"}
        agent = request.user_agent.string
        if agent:
            client["user_agent"] = agent[:512]
        return client
    if source == "request_id":
        return request_state.current().request_id
    head, _, name = source.partition(".")
    return inputs[head].get(name)


def call_kwargs(route, inputs, principal):
    if route.args is None:
        return {**inputs["query"], **inputs["body"], **inputs["path"]}
    kwargs = {}
    for kwarg, source in route.args.items():
        value = _pick(source, inputs, principal)
        if value is not None or source in ("path", "query", "body"):
            kwargs[kwarg] = value
    return kwargs


def _render_accepted(route, result):
    schema = route.accepted_response() if route.accepted_response is not None else None
    body = schema.dump(result) if schema is not None else result
    response = current_app.response_class(json.dumps(body, separators=(",", ":")),
                                          status=202, mimetype="application/json")
    try:
        response.headers["Location"] = route.accepted.format(**result)
    except (KeyError, IndexError, ValueError):
        pass
    return response


def _render(route, result, response_schema):
    app = current_app
    if route.accepted and isinstance(result, dict) and result.get("accepted") is True:
        return _render_accepted(route, result)
    if route.status == 204:
        return app.response_class(status=204)
    if route.wrap:
        result = {route.wrap: result}
    body = response_schema.dump(result) if response_schema is not None else result
    response = app.response_class(json.dumps(body, separators=(",", ":")),
                                  status=route.status, mimetype="application/json")
    if route.location and isinstance(result, dict):
        try:
            response.headers["Location"] = route.location.format(**result)
        except (KeyError, IndexError, ValueError):
            pass
    return response


def _streamed(route, state, kwargs, first, context):
    """A response sending ``first``'s data, then each next page's as it is fetched. The
    length is declared, so a stream cut short by a failing page is seen as such."""

    def pages():
        page = first
        while True:
            if page.get("data"):
                yield page["data"].encode("utf-8")
            offset = page.get("next_offset")
            if offset is None:
                return
            try:
                page = state.rpc.call(route.service, route.rpc_method,
                                      {**kwargs, "offset": offset}, timeout=route.timeout,
                                      context=context)
            except Exception as exc:  # logged, then raised: the server cuts the connection
                log.error("stream of %s stopped at byte %s (%s)", request.path, offset,
                          type(exc).__name__)
                raise

    response = current_app.response_class(stream_with_context(pages()), status=route.status,
                                          mimetype=route.stream)
    if isinstance(first.get("bytes"), int):
        response.headers["Content-Length"] = str(first["bytes"])
    if first.get("sha256"):
        response.headers["X-Content-SHA256"] = first["sha256"]
    if isinstance(first.get("count"), int):
        response.headers["X-Item-Count"] = str(first["count"])
    return response


def make_view(route, state):
    """The Flask view of ``route``; ``state`` is the app's Gateway (pool, cache, ...)."""

    schemas = {name: cls() if cls is not None else None for name, cls in (
        ("path", route.path_params), ("query", route.query), ("body", route.body),
        ("response", route.response))}

    def view(**path_values):
        this = request_state.current()
        this.route = route
        state.limits.hit(route.rate_limit)
        principal = None if route.public else require_principal()
        if route.needs_permission:
            for needed in (route.permission, *route.also):
                if not state.permissions.allows(principal.user_id, needed, route.scope):
                    raise Forbidden(f"this needs the permission {needed}",
                                    {"permission": needed})
        if route.query is None and request.args:
            raise Invalid("this operation takes no query parameters",
                          {name: ["unknown field"] for name in request.args})
        inputs = {
            "path": _load(schemas["path"], path_values, "path") if route.path_params
            else dict(path_values),
            "query": _load(schemas["query"], _query_values(schemas["query"]), "query")
            if route.query is not None else {},
            "body": _load(schemas["body"], _json_body(), "body") if route.body is not None
            else {},
        }
        kwargs, context = call_kwargs(route, inputs, principal), rpc_context()
        try:
            result = state.rpc.call(route.service, route.rpc_method, kwargs,
                                    timeout=route.timeout, context=context)
        except PlinthError:
            this.target_error = True  # the route's ``errors`` remap applies to these only
            raise
        if route.stream:
            return _streamed(route, state, kwargs, result, context)
        return _render(route, result, schemas["response"])

    view.__name__ = view.__qualname__ = route.endpoint
    return view

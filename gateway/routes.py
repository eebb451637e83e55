"""The route table: every HTTP operation of the API as one declarative entry.

An entry says which ``METHOD /path`` maps to which ``service.method``, what it needs
(permission, rate-limit class, timeout), how HTTP inputs become the call's keyword arguments,
and the marshmallow schemas of its path parameters, query, body and response. The core API
(the table in README, "The gateway") is ``CORE_ROUTES`` below; feature services add theirs
with a YAML file each in ``config/routes.d/`` (``ROUTES_DIR``), read at start: no gateway code
changes.

Route files (``config/routes.d/<service>.yaml``)::

    service: billing                    # default target service and permission scope
    routes:
      - method: GET
        path: /api/v1/invoices/{invoice_id}
        target: billing.get_invoice     # or just get_invoice (the file's service)
        permission: invoices:read       # required: "public", "authenticated" or resource:action
        scope: billing                  # scope of the permission check (default: service)
        rate_limit: read                # auth | default | read (default: default)
        timeout: 5                      # seconds (default: RPC_TIMEOUT)
        status: 200                     # success status; 204 sends no body
        summary: Read an invoice
        path_params:                    # field specs (below), or a dotted schema path
          invoice_id: uuid
        query:
          expand: {type: boolean}
        body: billing.schemas:CreateInvoiceSchema
        response:
          id: {type: string, required: true}
          amount: {type: number}
          lines: {type: array, items: {type: object}}
        args:                           # call kwarg: source (default: path + query + body)
          invoice_id: path.invoice_id
          user_id: caller.id
        wrap: invoice                   # answer {"invoice": result} instead of result
        stream: text/csv                # or: the target answers pages {data, next_offset,
                                        # bytes}, called again with offset=next_offset; the
                                        # body is streamed as this type (no response schema)
        errors: {unauthorized: 403}     # a typed error's kind -> another HTTP status

Every route names its ``permission``: there is no default, so a route that forgets it is
refused at start rather than opened to every signed-in user. ``public`` needs no token,
``authenticated`` any valid token, ``<resource>:<action>`` that permission.

Field specs: ``name: TYPE`` or ``name: {type: TYPE, required, nullable, min, max, enum,
pattern, default, items, description}`` with TYPE one of string, integer, number, boolean,
uuid, email, date-time, object, array (min/max bound a string's length, a number's value or
an array's size). A schema given as ``package.module:Class`` (or ``package.module.Class``)
is imported instead; it must be a marshmallow ``Schema``.

Argument sources: ``path``, ``query``, ``body`` (all validated fields), ``path.<name>``,
``query.<name>``, ``body.<name>``, ``caller.id`` (the token's user id), ``caller.session``
(its session id), ``client`` (``{ip, user_agent}`` of the HTTP client), ``request_id``.
"""

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import marshmallow
from marshmallow import fields, validate

from gateway import schemas as s
from gateway.settings import read_yaml
from shared import contracts
from shared.config import ConfigError
from shared.schemas import Schema

__all__ = ["Route", "CORE_ROUTES", "RATE_CLASSES", "PUBLIC", "AUTHENTICATED", "load_routes",
           "routes_from_file", "schema_from_spec"]

PUBLIC = "public"
AUTHENTICATED = "authenticated"
PERMISSION_REQUIRED = (f"permission is required: {PUBLIC!r} (no token), {AUTHENTICATED!r} "
                       "(any valid token) or a permission such as 'invoices:read'")
RATE_CLASSES = ("auth", "default", "read")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
SOURCES = ("path", "query", "body")
CALLER_SOURCES = ("caller.id", "caller.session", "client", "request_id")
_PATH = re.compile(r"^/[A-Za-z0-9_\-./{}]*$")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MEDIA_TYPE = re.compile(r"^[a-z]+/[a-z0-9.+\-]+$")
_TARGET = re.compile(r"^[a-z][a-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    target: str | None
    permission: str | None = None  # required (check refuses None): no route is open by default
    scope: str | None = None
    rate_limit: str = "default"
    timeout: float | None = None
    status: int = 200
    path_params: type[Schema] | None = None
    query: type[Schema] | None = None
    body: type[Schema] | None = None
    response: type[Schema] | None = None
    args: dict | None = None
    wrap: str | None = None
    location: str | None = None
    # more permissions the caller must also hold (each checked like ``permission``)
    also: tuple = ()
    # an answer {"accepted": true, ...} means "still running": 202, this Location, the body
    # through ``accepted_response``
    accepted: str | None = None
    accepted_response: type[Schema] | None = None
    # the target answers in pages ({data, next_offset, bytes, sha256?}, called again with
    # ``offset=next_offset`` until it is None): the body is streamed as this media type
    stream: str | None = None
    error_status: dict = field(default_factory=dict)
    summary: str = ""
    tag: str = ""
    name: str = ""

    @property
    def service(self):
        return self.target.split(".", 1)[0] if self.target else None

    @property
    def rpc_method(self):
        return self.target.split(".", 1)[1] if self.target else None

    @property
    def rule(self):
        """The Flask rule: ``{user_id}`` becomes ``<user_id>``."""
        return _PARAM.sub(r"<\1>", self.path)

    @property
    def path_names(self):
        return _PARAM.findall(self.path)

    @property
    def endpoint(self):
        return self.name or f"{self.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', self.path.lower())}"

    @property
    def public(self):
        return self.permission == PUBLIC

    @property
    def needs_permission(self):
        return self.permission not in (PUBLIC, AUTHENTICATED)

    def check(self):
        """Refuse an entry that could not work (at start, not at the first request)."""
        where = f"route {self.method} {self.path}"
        if self.method not in METHODS:
            raise ConfigError(f"{where}: method must be one of {', '.join(METHODS)}")
        if not _PATH.match(self.path):
            raise ConfigError(f"{where}: path must start with / and hold only URL characters")
        if self.target is not None and not _TARGET.match(self.target):
            raise ConfigError(f"{where}: target must be service.method")
        if not isinstance(self.permission, str) or not self.permission:
            raise ConfigError(f"{where}: {PERMISSION_REQUIRED}")
        if self.needs_permission and not contracts.is_valid(self.permission):
            raise ConfigError(f"{where}: {contracts.problem(self.permission)} "
                              f"(permission {self.permission!r})")
        for extra in self.also:
            if not contracts.is_valid(extra):
                raise ConfigError(f"{where}: {contracts.problem(extra)} (permission {extra!r})")
        if self.rate_limit not in RATE_CLASSES:
            raise ConfigError(f"{where}: rate_limit must be one of {', '.join(RATE_CLASSES)}")
        if self.timeout is not None and not 0 < self.timeout <= 300:
            raise ConfigError(f"{where}: timeout must be between 0 and 300 seconds")
        if not 200 <= self.status < 300:
            raise ConfigError(f"{where}: status must be a 2xx")
        if self.stream is not None and (not _MEDIA_TYPE.match(self.stream) or self.response):
            raise ConfigError(f"{where}: stream is a media type (type/subtype), and a streamed "
                              "route has no response schema")
        declared = set(self.path_params().fields) if self.path_params else set()
        if self.path_params and declared != set(self.path_names):
            raise ConfigError(f"{where}: path_params must declare exactly "
                              f"{sorted(self.path_names)}")
        for kwarg, source in (self.args or {}).items():
            if not _valid_source(source, self):
                raise ConfigError(f"{where}: argument {kwarg} has an unknown source {source!r}")
        return self


def _valid_source(source, route):
    if not isinstance(source, str):
        return False
    if source in SOURCES or source in CALLER_SOURCES:
        return True
    head, _, name = source.partition(".")
    if head == "path":
        return name in route.path_names
    return head in ("query", "body") and bool(name)


API = "/api/v1"


def _r(method, path, target, **kwargs):
    return Route(method, API + path, target, **kwargs)


CORE_ROUTES = [
    # -- auth ---------------------------------------------------------------------------------
    _r("POST", "/users", "identity.create_user", permission=PUBLIC, rate_limit="auth",
       status=201, body=s.SignUpSchema, response=s.UserSchema, args={"data": "body"},
       location=API + "/users/{id}", tag="users", name="sign_up",
       summary="Sign up: create an account"),
    _r("POST", "/auth/login", "auth.login", permission=PUBLIC, rate_limit="auth",
       body=s.LoginSchema, response=s.TokenPairSchema, tag="auth", name="login",
       args={"email": "body.email", "password": "body.password", "client": "client"},
       summary="Log in: a token pair for an email and password"),
    _r("POST", "/auth/refresh", "auth.refresh", permission=PUBLIC, rate_limit="auth",
       body=s.RefreshSchema, response=s.TokenPairSchema, tag="auth", name="refresh",
       args={"refresh_token": "body.refresh_token"},
       summary="A new token pair for a refresh token (single use; reuse revokes the session)"),
    _r("POST", "/auth/logout", "auth.end_session", permission=AUTHENTICATED, status=204,
       tag="auth", name="logout",
       args={"session_id": "caller.session", "user_id": "caller.id"},
       summary="Log out: revoke the session of this access token"),
    _r("POST", "/auth/logout-all", "auth.logout_all", permission=AUTHENTICATED, status=204,
       tag="auth", name="logout_all", args={"user_id": "caller.id"},
       summary="Revoke every session of the caller"),
    # -- the caller's own profile -------------------------------------------------------------
    _r("GET", "/users/me", "identity.get_user", permission="profile:read", rate_limit="read",
       response=s.UserSchema, args={"user_id": "caller.id"}, tag="users", name="get_me",
       summary="The caller's profile"),
    _r("PATCH", "/users/me", "identity.update_user", permission="profile:write",
       body=s.UpdateMeSchema, response=s.UserSchema, tag="users", name="update_me",
       args={"user_id": "caller.id", "changes": "body"}, summary="Change the caller's profile"),
    _r("POST", "/users/me/password", "identity.change_password", permission="password:write",
       rate_limit="auth", status=204, body=s.ChangePasswordSchema, tag="users",
       name="change_my_password", error_status={"unauthorized": 403},
       args={"user_id": "caller.id", "old_password": "body.old_password",
             "new_password": "body.new_password"},
       summary="Change the caller's password (every session is revoked)"),
    # -- users (administration) ---------------------------------------------------------------
    _r("GET", "/users", "identity.list_users", permission="users:read", rate_limit="read",
       query=s.ListUsersQuery, response=s.UserPageSchema, args={"filters": "query"},
       tag="users", name="list_users", summary="List users, oldest first (keyset pages)"),
    _r("POST", "/admin/users", "identity.provision_user", permission="users:write",
       also=("roles:write",), status=201, timeout=15, body=s.ProvisionUserSchema,
       response=s.ProvisionedUserSchema, args={"data": "body"}, location=API + "/users/{id}",
       accepted=API + "/sagas/{saga_id}", accepted_response=s.SagaAcceptedSchema,
       error_status={"not_found": 422}, tag="users", name="provision_user",
       summary="Create a user with roles (a saga: 201 when done, 202 while it goes on, 422 "
               "naming a role that could not be assigned, with the saga id)"),
    _r("GET", "/sagas/{saga_id}", "identity.get_saga", permission="sagas:read",
       rate_limit="read", path_params=s.SagaPath, response=s.SagaSchema, tag="sagas",
       name="get_saga", summary="A saga's status, current step and error"),
    _r("GET", "/users/{user_id}", "identity.get_user", permission="users:read",
       rate_limit="read", path_params=s.UserPath, response=s.UserSchema, tag="users",
       name="get_user", summary="Read a user"),
    _r("PATCH", "/users/{user_id}", "identity.update_user", permission="users:write",
       path_params=s.UserPath, body=s.UpdateUserSchema, response=s.UserSchema, tag="users",
       args={"user_id": "path.user_id", "changes": "body"}, name="update_user",
       summary="Change a user"),
    _r("DELETE", "/users/{user_id}", "identity.delete_user", permission="users:write",
       status=204, path_params=s.UserPath, tag="users", name="delete_user",
       summary="Delete a user (personal data is scrubbed)"),
    _r("POST", "/users/{user_id}/disable", "identity.disable_user", permission="users:write",
       path_params=s.UserPath, response=s.UserSchema, tag="users", name="disable_user",
       summary="Disable a user (their sessions are revoked)"),
    _r("POST", "/users/{user_id}/enable", "identity.enable_user", permission="users:write",
       path_params=s.UserPath, response=s.UserSchema, tag="users", name="enable_user",
       summary="Enable a disabled user"),
    # -- roles and assignments ----------------------------------------------------------------
    _r("GET", "/roles", "authz.list_roles", permission="roles:read", rate_limit="read",
       response=s.RoleListSchema, wrap="items", tag="roles", name="list_roles",
       summary="Every role"),
    _r("POST", "/roles", "authz.create_role", permission="roles:write", status=201,
       body=s.CreateRoleSchema, response=s.RoleSchema, args={"data": "body"}, tag="roles",
       location=API + "/roles/{name}", name="create_role", summary="Create a role"),
    _r("GET", "/roles/{name}", "authz.get_role", permission="roles:read", rate_limit="read",
       path_params=s.RolePath, response=s.RoleSchema, tag="roles", name="get_role",
       summary="Read a role"),
    _r("PATCH", "/roles/{name}", "authz.update_role", permission="roles:write",
       path_params=s.RolePath, body=s.UpdateRoleSchema, response=s.RoleSchema, tag="roles",
       args={"name": "path.name", "changes": "body"}, name="update_role",
       summary="Change a role"),
    _r("DELETE", "/roles/{name}", "authz.delete_role", permission="roles:write", status=204,
       path_params=s.RolePath, tag="roles", name="delete_role", summary="Delete a role"),
    _r("GET", "/users/{user_id}/roles", "authz.roles_of", permission="roles:read",
       rate_limit="read", path_params=s.UserPath, response=s.AssignmentListSchema,
       wrap="items", tag="roles", name="roles_of", summary="A user's role assignments"),
    _r("PUT", "/users/{user_id}/roles/{name}", "authz.assign_role", permission="roles:write",
       path_params=s.AssignmentPath, query=s.ScopeQuery, response=s.AssignmentSchema,
       args={"user_id": "path.user_id", "role": "path.name", "scope": "query.scope"},
       tag="roles", name="assign_role", summary="Give a user a role (idempotent)"),
    _r("DELETE", "/users/{user_id}/roles/{name}", "authz.unassign_role",
       permission="roles:write", status=204, path_params=s.AssignmentPath, query=s.ScopeQuery,
       args={"user_id": "path.user_id", "role": "path.name", "scope": "query.scope"},
       tag="roles", name="unassign_role", summary="Take a role from a user"),
    _r("GET", "/authz/check", "authz.check", permission="authz:check", rate_limit="read",
       query=s.CheckQuery, response=s.CheckResultSchema, wrap="allowed", tag="roles",
       args={"user_id": "caller.id", "permission": "query.permission",
             "scope": "query.scope"}, name="check",
       summary="Whether the caller holds a permission"),
    # -- audit --------------------------------------------------------------------------------
    _r("GET", "/audit/events", "audit.query", permission="audit:read", rate_limit="read",
       query=s.AuditQuery, response=s.AuditPageSchema, args={"filters": "query"},
       tag="audit", name="audit_events", summary="Query the audit trail, newest first"),
    _r("GET", "/audit/events/{entry_id}", "audit.get", permission="audit:read",
       rate_limit="read", path_params=s.AuditEntryPath, response=s.AuditEntrySchema,
       tag="audit", name="audit_event", summary="Read one audit entry"),
    _r("POST", "/audit/exports", "audit.start_export", permission="audit:read", status=202,
       body=s.AuditExportRequest, response=s.AuditExportSchema, args={"filters": "body"},
       location=API + "/audit/exports/{id}", tag="audit", name="audit_export_start",
       summary="Export the entries matching the filters (a task: 202, follow Location)"),
    _r("GET", "/audit/exports/{export_id}", "audit.get_export", permission="audit:read",
       rate_limit="read", path_params=s.AuditExportPath, response=s.AuditExportSchema,
       tag="audit", name="audit_export", summary="An export's status and counts"),
    _r("GET", "/audit/exports/{export_id}/download", "audit.read_export",
       permission="audit:read", rate_limit="read", path_params=s.AuditExportPath,
       stream="application/x-ndjson", tag="audit", name="audit_export_download",
       summary="A done export's entries, oldest first, as NDJSON (streamed; 409 before)"),
    _r("GET", "/audit/verify", "audit.verify", permission="audit:read", query=s.VerifyQuery,
       response=s.VerifyReportSchema, tag="audit", name="audit_verify",
       summary="Check the audit chain's integrity"),
]


# -- route files ------------------------------------------------------------------------------
_TYPES = {
    "string": fields.String, "integer": fields.Integer, "number": fields.Float,
    "boolean": fields.Boolean, "uuid": s.Uuid, "email": fields.Email,
    "date-time": s.Timestamp, "object": fields.Dict, "array": fields.List,
}
_SPEC_KEYS = {"type", "required", "nullable", "min", "max", "enum", "pattern", "default",
              "items", "description"}


def import_schema(dotted):
    """The Schema class at ``package.module:Class`` or ``package.module.Class``."""
    module_name, sep, attr = dotted.partition(":")
    if not sep:
        module_name, _, attr = dotted.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"cannot import schema {dotted!r}: {exc}") from None
    if not (isinstance(found, type) and issubclass(found, marshmallow.Schema)):
        raise ConfigError(f"{dotted!r} is not a marshmallow Schema")
    if not issubclass(found, Schema):  # not derived from the kernel's: give it its checks
        found = type(found.__name__, (found, Schema), {"__module__": found.__module__})
    return found


def _field(name, spec, where):
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or not set(spec) <= _SPEC_KEYS:
        unknown = sorted(set(spec) - _SPEC_KEYS) if isinstance(spec, dict) else spec
        raise ConfigError(f"{where}: field {name}: unknown spec {unknown!r}")
    kind = spec.get("type", "string")
    if kind not in _TYPES:
        raise ConfigError(f"{where}: field {name}: type must be one of {', '.join(_TYPES)}")
    low, high = spec.get("min"), spec.get("max")
    validators = []
    if low is not None or high is not None:
        if kind in ("integer", "number"):
            validators.append(validate.Range(min=low, max=high))
        else:
            validators.append(validate.Length(min=low, max=high))
    if spec.get("enum"):
        validators.append(validate.OneOf(spec["enum"]))
    if spec.get("pattern"):
        validators.append(validate.Regexp(spec["pattern"]))
    kwargs = {"required": bool(spec.get("required")), "allow_none": bool(spec.get("nullable"))}
    if validators:
        kwargs["validate"] = validators
    if "default" in spec:
        kwargs["load_default"] = spec["default"]
    if spec.get("description"):
        kwargs["metadata"] = {"description": str(spec["description"])}
    if kind == "array":
        return fields.List(_field(f"{name}[]", spec.get("items", "string"), where), **kwargs)
    return _TYPES[kind](**kwargs)


def schema_from_spec(spec, name, where="routes"):
    """A Schema class from field specs, a dotted path, or None."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return import_schema(spec)
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: a schema is a mapping of field specs or a dotted path")
    return Schema.from_dict({k: _field(k, v, where) for k, v in spec.items()}, name=name)


_ROUTE_KEYS = {"method", "path", "target", "permission", "scope", "rate_limit", "timeout",
               "status", "summary", "path_params", "query", "body", "response", "args", "wrap",
               "errors", "name", "tag", "stream"}


def _camel(text):
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", text) if part)


def route_from_spec(spec, service, where):
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: each route is a mapping")
    unknown = set(spec) - _ROUTE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    try:
        method = str(spec["method"]).upper()
        path = str(spec["path"])
    except KeyError as exc:
        raise ConfigError(f"{where}: {exc.args[0]} is required") from None
    permission = spec.get("permission")
    if not isinstance(permission, str) or not permission.strip():
        raise ConfigError(f"{where} ({method} {path}): {PERMISSION_REQUIRED}")
    target = str(spec.get("target") or "")
    if target and "." not in target:
        target = f"{service}.{target}"
    if not target:
        raise ConfigError(f"{where}: target is required")
    name = spec.get("name") or f"{service}_{target.split('.', 1)[1]}_{method.lower()}"
    prefix = _camel(name)
    path_params = spec.get("path_params")
    if path_params is None:
        path_params = {p: {"type": "string", "required": True, "max": 200}
                       for p in _PARAM.findall(path)} or None
    elif isinstance(path_params, dict):
        path_params = {k: ({"type": v} if isinstance(v, str) else dict(v)) | {"required": True}
                       for k, v in path_params.items()}
    errors = spec.get("errors") or {}
    if not isinstance(errors, dict) or not all(isinstance(v, int) for v in errors.values()):
        raise ConfigError(f"{where}: errors maps an error kind to an HTTP status")
    try:
        timeout = float(spec["timeout"]) if spec.get("timeout") is not None else None
        status = int(spec.get("status", 200))
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: timeout and status must be numbers") from None
    route = Route(
        method=method, path=path, target=target,
        permission=permission.strip(),
        scope=spec.get("scope", service), rate_limit=str(spec.get("rate_limit", "default")),
        timeout=timeout, status=status,
        path_params=schema_from_spec(path_params, f"{prefix}Path", where),
        query=schema_from_spec(spec.get("query"), f"{prefix}Query", where),
        body=schema_from_spec(spec.get("body"), f"{prefix}Body", where),
        response=schema_from_spec(spec.get("response"), f"{prefix}Response", where),
        args=spec.get("args"), wrap=spec.get("wrap"), error_status=dict(errors),
        stream=str(spec["stream"]) if spec.get("stream") else None,
        summary=str(spec.get("summary", "")), tag=str(spec.get("tag") or service), name=name,
    )
    return route.check()


def routes_from_file(path):
    data = read_yaml(path)
    service = data.get("service")
    if not isinstance(service, str) or not re.match(r"^[a-z][a-z0-9_]*$", service):
        raise ConfigError(f"{path}: 'service' must name the service (lower case)")
    specs = data.get("routes") or []
    if not isinstance(specs, list):
        raise ConfigError(f"{path}: 'routes' must be a list")
    return [route_from_spec(spec, service, f"{path} route {i + 1}")
            for i, spec in enumerate(specs)]


def load_routes(routes_dir=None, core=True):
    """The core routes plus those of every ``*.yaml`` in ``routes_dir``; duplicates refused."""
    table = [r.check() for r in CORE_ROUTES] if core else []
    if routes_dir and Path(routes_dir).is_dir():
        for path in sorted(Path(routes_dir).glob("*.y*ml")):
            table.extend(routes_from_file(path))
    seen, names = set(), set()
    for route in table:
        key = (route.method, _PARAM.sub("{}", route.path))
        if key in seen:
            raise ConfigError(f"two routes for {route.method} {route.path}")
        if route.endpoint in names:
            raise ConfigError(f"two routes named {route.endpoint}")
        seen.add(key)
        names.add(route.endpoint)
    return table

"""Builders for the gateway's tests: apps on the test's broker, a small feature service with
routes of its own, tokens signed by keys the test holds, and the HTTP steps of the API."""

import json
import time
import uuid

import eventlet
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway import create_app
from shared import service as kernel
from shared.errors import Conflict, Invalid, NotFound
from shared.rpc import rpc
from tests.helpers import STRONG_PASSWORD, new_email

API = "/api/v1"
ISSUER, AUDIENCE = "plinth", "plinth-api"

# what every test app gets unless a test says otherwise: no routes.d of the repository, no
# rate limits in the way, short timeouts
TEST_CONFIG = {
    "ROUTES_DIR": "",
    "RPC_TIMEOUT": 5,
    "RATE_LIMIT_AUTH_IP": "",
    "RATE_LIMIT_DEFAULT_IP": "",
    "RATE_LIMIT_DEFAULT_USER": "",
    "RATE_LIMIT_READ_IP": "",
    "RATE_LIMIT_READ_USER": "",
    "ACCESS_LOG": False,
    "JWKS_REFETCH_INTERVAL": 0.2,
}


def make_app(amqp_uri="amqp://guest:guest@127.0.0.1:5672/", **config):
    return create_app({"AMQP_URI": amqp_uri, **TEST_CONFIG, **config})


def close_app(app):
    app.extensions["plinth"].close()


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def wait_until(predicate, timeout=5.0, interval=0.01, what="the condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        eventlet.sleep(interval)


# -- HTTP steps -------------------------------------------------------------------------------
def sign_up(client, email=None, password=STRONG_PASSWORD, **fields):
    response = client.post(f"{API}/users", json={"email": email or new_email("gw"),
                                                 "password": password, **fields})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def log_in(client, email, password=STRONG_PASSWORD):
    response = client.post(f"{API}/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def user_with_token(client, **fields):
    """Sign up and log in through the gateway, and wait until authz has given the new user
    the self-service role (it does so on user.created)."""
    user = sign_up(client, **fields)
    pair = log_in(client, user["email"])
    wait_until(lambda: client.get(f"{API}/users/me",
                                  headers=bearer(pair["access_token"])).status_code == 200,
               what="the user role of a new user")
    return user, pair


def admin_with_token(client, rpc_client):
    """A user made admin over RPC, with a token from the gateway."""
    user = sign_up(client)
    rpc_client.call("authz", "assign_role", kwargs={"user_id": user["id"], "role": "admin"},
                    context={"request_id": "gw-test-admin", "actor_type": "system"})
    pair = log_in(client, user["email"])
    wait_until(lambda: client.get(f"{API}/users", query_string={"limit": 1},
                                  headers=bearer(pair["access_token"])).status_code == 200,
               what="the admin role")
    return user, pair


# -- tokens signed by the test ----------------------------------------------------------------
class TestKeys:
    """Signing keys held by the test, published as a JWKS the gateway can be given."""

    __test__ = False

    def __init__(self, alg="RS256", kid=None):
        self.alg = alg
        self.kid = kid or uuid.uuid4().hex[:16]
        if alg == "ES256":
            self.private_key = ec.generate_private_key(ec.SECP256R1())
        else:
            self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self):
        jwk = json.loads(jwt.get_algorithm_by_name(self.alg).to_jwk(
            self.private_key.public_key()))
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def jwks(self):
        return {"keys": [self.jwk()]}

    def claims(self, **overrides):
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": str(uuid.uuid4()), "iat": now,
                  "nbf": now, "exp": now + 300, "jti": uuid.uuid4().hex,
                  "sid": str(uuid.uuid4()), "typ": "at+jwt"}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, headers=None, key=None, alg=None, **claims):
        header = {"kid": self.kid, "typ": "at+jwt", **(headers or {})}
        header = {k: v for k, v in header.items() if v is not None}
        return jwt.encode(self.claims(**claims), key or self.private_key,
                          algorithm=alg or self.alg, headers=header)


# -- a feature service with routes of its own -------------------------------------------------
class FeatureService(kernel.ServiceBase):
    """Stands for a team's service (billing, blog...) reached through config/routes.d."""

    name = "gwfeature"

    @rpc
    def echo(self, **kwargs):
        return {"kwargs": kwargs, "request_id": self.context.request_id,
                "actor": self.context.actor.to_dict()}

    @rpc
    def slow(self, seconds=1.0):
        eventlet.sleep(float(seconds))
        return {"slept": seconds}

    @rpc
    def fail(self, kind="internal"):
        if kind == "invalid":
            raise Invalid("bad amount", {"amount": ["must be positive"]})
        if kind == "conflict":
            raise Conflict("already paid", {"invoice": ["already paid"]})
        if kind == "not_found":
            raise NotFound("no such invoice", {"invoice_id": "x"})
        raise RuntimeError("secret internals: /etc/passwd and SELECT * FROM users")


FEATURE_ROUTES = """
service: gwfeature
routes:
  - method: POST
    path: /api/v1/feature/echo/{invoice_id}
    target: echo
    permission: invoices:write
    summary: Echo what the gateway sends
    path_params: {invoice_id: uuid}
    query:
      expand: {type: boolean}
    body:
      amount: {type: number, required: true, min: 0.01}
      currency: {type: string, enum: [EUR, USD], default: EUR}
      lines: {type: array, items: {type: object}, max: 3}
    args:
      invoice_id: path.invoice_id
      expand: query.expand
      data: body
      user_id: caller.id
      client: client
  - method: GET
    path: /api/v1/feature/slow
    target: gwfeature.slow
    permission: public
    timeout: 0.3
    query:
      seconds: {type: number, min: 0, max: 5}
  - method: GET
    path: /api/v1/feature/fail/{kind}
    target: fail
    permission: authenticated
    path_params:
      kind: {type: string, enum: [internal, invalid, conflict, not_found]}
    errors: {conflict: 422}
"""


def write_feature_routes(directory):
    path = directory / "gwfeature.yaml"
    path.write_text(FEATURE_ROUTES)
    return directory

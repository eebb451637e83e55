"""Access-token checks and the JWKS cache, with keys the test holds."""

import base64
import json
import time

import jwt
import pytest

from gateway.security import Jwks, TokenValidator, bearer_token
from shared.errors import Unauthorized, Unavailable
from tests.support.gateway_helpers import AUDIENCE, ISSUER, TestKeys


class Fetcher:
    """Stands for auth's jwks() RPC: counts calls, answers with the current key set."""

    def __init__(self, *keys):
        self.keys = list(keys)
        self.calls = 0
        self.error = None

    def __call__(self):
        self.calls += 1
        if self.error is not None:
            raise self.error
        return {"keys": [k.jwk() for k in self.keys]}


@pytest.fixture(scope="module")
def rsa_keys():
    return TestKeys("RS256")


def validator_for(fetcher, refetch_interval=5.0, algorithms=("RS256", "ES256"), **kwargs):
    jwks = Jwks(fetcher, algorithms, refetch_interval=refetch_interval)
    return TokenValidator(jwks, ISSUER, AUDIENCE, leeway=kwargs.pop("leeway", 5),
                          algorithms=algorithms)


def reason(validator, token):
    with pytest.raises(Unauthorized) as info:
        validator.validate(token)
    return info.value.details["reason"]


def test_a_valid_token_gives_its_subject_and_session(rsa_keys):
    validator = validator_for(Fetcher(rsa_keys))
    token = rsa_keys.token(sub="0190c0de-0000-7000-8000-000000000001", sid="s-1")
    principal = validator.validate(token)
    assert principal.user_id == "0190c0de-0000-7000-8000-000000000001"
    assert principal.session_id == "s-1" and principal.actor_type == "user"


def test_es256_tokens_are_accepted_when_allowed():
    keys = TestKeys("ES256")
    validator = validator_for(Fetcher(keys))
    assert validator.validate(keys.token()).claims["aud"] == AUDIENCE


@pytest.mark.parametrize("claims, expected", [
    ({"exp": "now-60"}, "expired"),
    ({"nbf": "now+120"}, "not_yet_valid"),
    ({"aud": "someone-else"}, "audience"),
    ({"iss": "https://evil.example"}, "issuer"),
    ({"exp": None}, "claims"),
    ({"nbf": None}, "claims"),
    ({"iat": None}, "claims"),
    ({"sub": None}, "claims"),
    ({"sub": "not-a-user-id"}, "claims"),
])
def test_claims_are_checked(rsa_keys, claims, expected):
    # times relative to when the test runs, not to when pytest collected it
    now = int(time.time())
    claims = {k: now + int(v[3:]) if isinstance(v, str) and v.startswith("now") else v
              for k, v in claims.items()}
    assert reason(validator_for(Fetcher(rsa_keys)), rsa_keys.token(**claims)) == expected


def test_leeway_tolerates_small_clock_skew(rsa_keys):
    validator = validator_for(Fetcher(rsa_keys), leeway=30)
    assert validator.validate(rsa_keys.token(exp=int(time.time()) - 10))


def test_the_token_type_header_must_be_an_access_token(rsa_keys):
    validator = validator_for(Fetcher(rsa_keys))
    assert reason(validator, rsa_keys.token(headers={"typ": "JWT"})) == "type"
    assert validator.validate(rsa_keys.token(headers={"typ": "application/at+jwt"}))


def test_a_forged_signature_is_refused(rsa_keys):
    validator = validator_for(Fetcher(rsa_keys))
    impostor = TestKeys("RS256", kid=rsa_keys.kid)  # same kid, other private key
    assert reason(validator, impostor.token()) == "signature"
    header, payload, signature = rsa_keys.token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "==="))
    claims["sub"] = "0190c0de-0000-7000-8000-0000000000ff"
    tampered = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert reason(validator, f"{header}.{tampered}.{signature}") == "signature"


def test_algorithm_confusion_and_none_are_refused(rsa_keys):
    validator = validator_for(Fetcher(rsa_keys))
    public_pem = rsa_keys.jwk()["n"].encode()  # anything usable as an HMAC secret
    hmac_token = jwt.encode(rsa_keys.claims(), public_pem, algorithm="HS256",
                            headers={"kid": rsa_keys.kid, "typ": "at+jwt"})
    assert reason(validator, hmac_token) == "algorithm"
    unsigned = jwt.encode(rsa_keys.claims(), None, algorithm="none",
                          headers={"kid": rsa_keys.kid, "typ": "at+jwt"})
    assert reason(validator, unsigned) == "algorithm"
    # an allowed algorithm that is not the named key's own
    es = TestKeys("ES256", kid=rsa_keys.kid)
    assert reason(validator, es.token()) == "algorithm"


def test_malformed_tokens_and_headers(rsa_keys):
    validator = validator_for(Fetcher(rsa_keys))
    assert reason(validator, "not.a.jwt") == "malformed"
    assert reason(validator, "x" * 9000) == "malformed"
    assert reason(validator, rsa_keys.token(headers={"kid": None})) == "unknown_key"
    assert bearer_token(None) is None
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    for header in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "Token abc"):
        with pytest.raises(Unauthorized):
            bearer_token(header)


def test_an_unknown_kid_refetches_at_most_once_per_interval(rsa_keys):
    fetcher = Fetcher(rsa_keys)
    validator = validator_for(fetcher, refetch_interval=0.3)
    validator.validate(rsa_keys.token())
    assert fetcher.calls == 1
    stranger = TestKeys("RS256")
    for _ in range(20):
        assert reason(validator, stranger.token()) == "unknown_key"
    assert fetcher.calls == 1  # the first fetch was just now: no refetch storm
    time.sleep(0.35)
    assert reason(validator, stranger.token()) == "unknown_key"
    assert fetcher.calls == 2


def test_a_failed_first_fetch_is_retried_soon_not_after_the_refetch_interval(rsa_keys):
    """A worker whose warm-up could not reach auth has no keys: every bearer request would be
    a 503 for the whole refetch interval. Without keys it retries after a short pause."""
    from shared.errors import Unavailable
    from shared.proof import UNLOADED_RETRY_INTERVAL

    fetcher = Fetcher(rsa_keys)
    fetcher.error = Unavailable("auth is starting")
    validator = validator_for(fetcher, refetch_interval=30.0)
    token = rsa_keys.token()
    with pytest.raises(Unavailable):
        validator.validate(token)
    with pytest.raises(Unavailable):
        validator.validate(token)
    assert fetcher.calls == 1  # not a fetch per request while auth is down
    fetcher.error = None
    time.sleep(UNLOADED_RETRY_INTERVAL + 0.05)
    assert validator.validate(token).user_id
    assert fetcher.calls == 2
    # once loaded, the refetch interval applies again
    stranger = TestKeys("RS256")
    assert reason(validator, stranger.token()) == "unknown_key"
    time.sleep(UNLOADED_RETRY_INTERVAL + 0.05)
    assert reason(validator, stranger.token()) == "unknown_key"
    assert fetcher.calls == 2


def test_a_rotated_key_is_picked_up_on_its_first_token(rsa_keys):
    fetcher = Fetcher(rsa_keys)
    validator = validator_for(fetcher, refetch_interval=0.0)
    validator.validate(rsa_keys.token())
    rotated = TestKeys("RS256")
    fetcher.keys.append(rotated)
    assert validator.validate(rotated.token())
    assert validator.validate(rsa_keys.token())  # the old key is still published
    assert fetcher.calls == 2


def test_keys_auth_cannot_serve_make_a_503_not_a_401(rsa_keys):
    fetcher = Fetcher(rsa_keys)
    fetcher.error = Unavailable("auth is down")
    validator = validator_for(fetcher, refetch_interval=0.0)
    with pytest.raises(Unavailable):
        validator.validate(rsa_keys.token())
    fetcher.error = None
    assert validator.validate(rsa_keys.token())


def test_keys_of_other_algorithms_or_uses_are_not_loaded(rsa_keys):
    jwks = Jwks(lambda: {"keys": [{**rsa_keys.jwk(), "use": "enc"},
                                  {**TestKeys("ES256").jwk()},
                                  {"kid": "junk", "alg": "RS256", "kty": "RSA", "n": "x"}]},
                ["RS256"])
    jwks.refresh()
    assert jwks.loaded and jwks.document() == {"keys": []}
    with pytest.raises(Unavailable):
        Jwks(lambda: {"nope": 1}, ["RS256"]).document()


class Clock:
    def __init__(self):
        self.offset = 0.0

    def time(self):
        return time.time() + self.offset

    def monotonic(self):
        return time.monotonic() + self.offset


def test_a_remembered_token_is_checked_afresh_once_it_expires(rsa_keys, monkeypatch):
    validator = validator_for(Fetcher(rsa_keys), leeway=0)
    checks = []
    real_check = validator._check
    monkeypatch.setattr(validator, "_check", lambda token: checks.append(1) or
                        real_check(token))
    token = rsa_keys.token(exp=int(time.time()) + 60)
    for _ in range(3):
        validator.validate(token)
    assert len(checks) == 1  # once, then from the cache
    clock = Clock()
    monkeypatch.setattr("shared.proof.time", clock)
    clock.offset = 61  # past exp: the cache must not answer (PyJWT's own clock then decides)
    validator.validate(token)
    assert len(checks) == 2


def test_a_remembered_token_is_refused_once_its_key_is_withdrawn(rsa_keys):
    fetcher = Fetcher(rsa_keys)
    validator = validator_for(fetcher)
    token = rsa_keys.token()
    assert validator.validate(token)
    fetcher.keys = [TestKeys("RS256")]  # auth retired the key (e.g. it leaked)
    validator.jwks.refresh(force=True)
    assert reason(validator, token) == "unknown_key"


def test_the_verified_token_cache_is_bounded(rsa_keys):
    jwks = Jwks(Fetcher(rsa_keys), ["RS256"])
    validator = TokenValidator(jwks, ISSUER, AUDIENCE, algorithms=["RS256"], cache_size=3)
    for _ in range(5):
        validator.validate(rsa_keys.token())
    assert len(validator._verified) <= 3

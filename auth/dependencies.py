import logging

from nameko.extensions import DependencyProvider
from sqlalchemy.orm import sessionmaker

from auth import keys, throttle, tokens
from shared import config as cfg
from shared.hub import Hub
from shared.rpc import rpc_timeout, rpc_timeout_key

log = logging.getLogger(__name__)

SECRET_KEY = "AUTH_KEY_ENCRYPTION_SECRET"
PREVIOUS_SECRETS_KEY = "AUTH_KEY_ENCRYPTION_PREVIOUS_SECRETS"
ISSUER_KEY = "AUTH_ISSUER"
AUDIENCE_KEY = "AUTH_AUDIENCE"
ACCESS_TTL_KEY = "AUTH_ACCESS_TOKEN_TTL"
REFRESH_TTL_KEY = "AUTH_REFRESH_TOKEN_TTL"
SERVICE_TTL_KEY = "AUTH_SERVICE_TOKEN_TTL"
LEEWAY_KEY = "AUTH_CLOCK_LEEWAY"
ALGORITHM_KEY = "AUTH_SIGNING_ALG"
RSA_BITS_KEY = "AUTH_RSA_KEY_BITS"
KEY_CACHE_KEY = "AUTH_KEY_CACHE_SECONDS"
KEY_MAX_AGE_KEY = "AUTH_KEY_MAX_AGE_DAYS"
REUSE_GRACE_KEY = "AUTH_REFRESH_REUSE_GRACE"
CHECK_USER_KEY = "AUTH_CHECK_USER_ON_REFRESH"
IDENTITY_TIMEOUT_KEY = rpc_timeout_key("identity")
OLD_IDENTITY_TIMEOUT_KEY = "AUTH_IDENTITY_TIMEOUT"  # deprecated name, still read
THROTTLE_KEYS = {
    "pair_threshold": ("AUTH_THROTTLE_PAIR_THRESHOLD", int),
    "client_threshold": ("AUTH_THROTTLE_CLIENT_THRESHOLD", int),
    "account_threshold": ("AUTH_THROTTLE_ACCOUNT_THRESHOLD", int),
    "base_delay": ("AUTH_THROTTLE_BASE_DELAY", float),
    "max_delay": ("AUTH_THROTTLE_MAX_DELAY", float),
    "decay_seconds": ("AUTH_THROTTLE_DECAY_SECONDS", float),
    "known_client_days": ("AUTH_KNOWN_CLIENT_DAYS", int),
}
DEVELOPMENT_SECRET = "plinth-development-only-key-encryption-secret"
MIN_PRODUCTION_SECRET_LENGTH = 32
RESERVATION_MARGIN = 5.0  # seconds a login's reservation outlives identity's timeout


def _positive(name, value):
    if value <= 0:
        raise cfg.ConfigError(f"{name} must be positive, not {value}")
    return value


def _at_least(name, value, minimum):
    if value < minimum:
        raise cfg.ConfigError(f"{name} must be at least {minimum}, not {value}")
    return value


def encryption_secrets(config, announce=True):
    """(secret, previous secrets). Refuses a missing, placeholder or short one in production."""
    secret = cfg.secret(config, SECRET_KEY, development_default=DEVELOPMENT_SECRET)
    if cfg.is_production(config) and len(secret) < MIN_PRODUCTION_SECRET_LENGTH:
        raise cfg.ConfigError(f"{SECRET_KEY} must be at least {MIN_PRODUCTION_SECRET_LENGTH} "
                              "characters when PLINTH_ENV=production")
    if secret == DEVELOPMENT_SECRET and announce:
        log.warning("%s is not set: signing keys are encrypted with the development secret",
                    SECRET_KEY)
    return secret, cfg.list_setting(config, PREVIOUS_SECRETS_KEY)


def token_settings(config):
    return tokens.TokenSettings(
        issuer=cfg.setting(config, ISSUER_KEY, "plinth"),
        audience=cfg.setting(config, AUDIENCE_KEY, "plinth-api"),
        access_ttl=_positive(ACCESS_TTL_KEY, cfg.setting(config, ACCESS_TTL_KEY, 900, int)),
        refresh_ttl=_positive(REFRESH_TTL_KEY,
                              cfg.setting(config, REFRESH_TTL_KEY, 30 * 24 * 3600, int)),
        leeway=_at_least(LEEWAY_KEY, cfg.setting(config, LEEWAY_KEY, 30, int), 0),
        service_ttl=_at_least(SERVICE_TTL_KEY,
                              cfg.setting(config, SERVICE_TTL_KEY, 300, int), 30),
    )


def throttle_policy(config):
    values = {field: _positive(key, cfg.setting(config, key, getattr(throttle.Policy, field),
                                                cast))
              for field, (key, cast) in THROTTLE_KEYS.items()}
    return throttle.Policy(**values)


def rsa_bits(config):
    """RSA key size: NIST's floor (2048 bits) or more."""
    return _at_least(RSA_BITS_KEY, cfg.setting(config, RSA_BITS_KEY, keys.DEFAULT_RSA_BITS, int),
                     2048)


class Tokens:
    """What a worker uses to sign, verify and publish tokens (plain: testable without nameko)."""

    def __init__(self, keyring, settings, key_max_age_days=0):
        self.keyring = keyring
        self.settings = settings
        self.key_max_age_days = key_max_age_days

    def issue(self, user_id, session_id):
        token, _ = tokens.issue_access_token(self.keyring.signer(), self.settings, user_id,
                                             session_id)
        return {"access_token": token, "token_type": "Bearer",
                "expires_in": self.settings.access_ttl}

    def issue_service(self, service):
        token, _ = tokens.issue_service_token(self.keyring.signer(), self.settings, service)
        return {"access_token": token, "token_type": "Bearer",
                "expires_in": self.settings.service_ttl}

    def verify(self, token):
        return tokens.verify_access_token(token, self.keyring, self.settings)

    def jwks(self):
        return self.keyring.jwks()

    def retire_window(self):
        return keys.retire_window(self.settings.access_ttl, self.keyring.cache_seconds,
                                  self.settings.leeway)

    def rotate(self, session, alg=None):
        return keys.rotate(session, self.keyring.cipher, alg or self.keyring.alg,
                           self.retire_window(), self.keyring.rsa_bits)


class TokenKeys(DependencyProvider):
    """The process's keyring: the active key is ensured (created if none) when the service
    starts, so a wrong encryption secret stops the start instead of failing logins later.
    Its keys live in the service's database, found through the container's ``Hub``."""

    hub = Hub()

    def setup(self):
        config = self.container.config
        self.secrets = encryption_secrets(config)
        self.alg = cfg.setting(config, ALGORITHM_KEY, keys.DEFAULT_ALGORITHM)
        if self.alg not in keys.ALGORITHMS:
            raise cfg.ConfigError(f"{ALGORITHM_KEY} must be one of {', '.join(keys.ALGORITHMS)}")
        self.settings = token_settings(config)
        self.cache_seconds = _at_least(KEY_CACHE_KEY,
                                       cfg.setting(config, KEY_CACHE_KEY, 5.0, float), 0)
        self.rsa_bits = rsa_bits(config)
        self.key_max_age_days = cfg.setting(config, KEY_MAX_AGE_KEY, 90, float)

    def start(self):
        # every provider is set up before any starts: the database has its engine by now
        sessions = sessionmaker(bind=self.hub.database().engine, expire_on_commit=False)
        self.keyring = keys.Keyring(sessions, keys.KeyCipher(*self.secrets), alg=self.alg,
                                    cache_seconds=self.cache_seconds, rsa_bits=self.rsa_bits)
        self.tokens = Tokens(self.keyring, self.settings, self.key_max_age_days)
        self.keyring.reload()
        self.keyring.signer()  # a secret that cannot open the active key stops the start

    def get_dependency(self, worker_ctx):
        return self.tokens


class LoginGuard:
    """Brute-force policy and the key that turns emails and clients into opaque counter keys."""

    def __init__(self, policy, hash_key, reuse_grace=0.0, check_user_on_refresh=True,
                 identity_timeout=10.0):
        self.policy = policy
        self.hash_key = hash_key
        self.reuse_grace = reuse_grace
        self.check_user_on_refresh = check_user_on_refresh
        self.identity_timeout = identity_timeout

    @property
    def reservation_hold(self):
        """How long an attempt in flight counts against the throttle at most: identity's
        answer is awaited ``identity_timeout`` seconds; past that a worker has died."""
        return self.identity_timeout + RESERVATION_MARGIN

    def keys(self, email, client):
        return throttle.Keys.of(self.hash_key, email, client)


class Guard(DependencyProvider):
    def setup(self):
        config = self.container.config
        secret, _ = encryption_secrets(config, announce=False)  # TokenKeys warns already
        self.guard = LoginGuard(
            throttle_policy(config), keys.derive(secret, "login-throttle-keys"),
            reuse_grace=cfg.setting(config, REUSE_GRACE_KEY, 0.0, float),
            check_user_on_refresh=cfg.setting(config, CHECK_USER_KEY, True, bool),
            identity_timeout=_positive(IDENTITY_TIMEOUT_KEY, rpc_timeout(
                config, "identity", 10.0, old_key=OLD_IDENTITY_TIMEOUT_KEY)),
        )

    def get_dependency(self, worker_ctx):
        return self.guard

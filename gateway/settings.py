"""The gateway's settings: defaults, then config/gateway.yaml (``${VAR:default}`` expanded from
the environment), then the dict given to ``create_app(config)``."""

import os
import re
from pathlib import Path

import yaml

from shared.config import ConfigError, as_bool, as_list

__all__ = ["DEFAULTS", "CONFIG_FILE_KEY", "Settings", "load", "read_yaml"]

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILE_KEY = "GATEWAY_CONFIG"
DEFAULT_FILE = ROOT / "config" / "gateway.yaml"

DEFAULTS = {
    "AMQP_URI": "amqp://guest:guest@127.0.0.1:5672/",
    "PLINTH_ENV": "development",
    # rpc: clients per process (shared.rpc_client), shared by its threads
    "RPC_POOL_SIZE": 4,
    "RPC_TIMEOUT": 10.0,
    "RPC_CONNECT_TIMEOUT": 3.0,
    "RETRY_AFTER_UNAVAILABLE": 2,
    # authentication
    "JWT_ISSUER": "plinth",
    "JWT_AUDIENCE": "plinth-api",
    "JWT_ALGORITHMS": "RS256,ES256,EdDSA",
    "JWT_LEEWAY": 30,
    "JWKS_REFETCH_INTERVAL": 5.0,
    "JWKS_MAX_AGE": 300.0,
    "JWKS_TIMEOUT": 3.0,
    # authorisation cache
    "AUTHZ_CACHE_SIZE": 10000,
    "AUTHZ_CACHE_TTL": 300.0,
    "AUTHZ_TIMEOUT": 3.0,
    "AUTHZ_EVENTS": True,
    # ended sessions: listen to auth's session.revoked and refuse those sessions' tokens;
    # while not listening, re-read auth's list of them at most this often (seconds) before
    # accepting a token
    "SESSION_EVENTS": True,
    "SESSION_CHECK_INTERVAL": 1.0,
    # AMQP heartbeat of the event listeners (whole seconds): a dead link is found in ~5 s
    "EVENTS_HEARTBEAT": 3,
    # rate limits: "N/period[;N/period...]" per class; empty disables that limit
    "RATELIMIT_ENABLED": True,
    "RATELIMIT_STORAGE_URI": "memory://",
    "RATELIMIT_KEY_PREFIX": "plinth-gateway",
    "RATELIMIT_STRATEGY": "fixed-window",
    "RATE_LIMIT_AUTH_IP": "20/minute;200/hour",
    "RATE_LIMIT_DEFAULT_IP": "1200/minute",
    "RATE_LIMIT_DEFAULT_USER": "600/minute",
    "RATE_LIMIT_READ_IP": "3000/minute",
    "RATE_LIMIT_READ_USER": "1200/minute",
    "TRUSTED_PROXIES": 0,
    # CORS: comma-separated lists; no origins means no CORS headers at all
    "CORS_ORIGINS": "",
    "CORS_METHODS": "GET,POST,PUT,PATCH,DELETE,OPTIONS",
    "CORS_HEADERS": "Authorization,Content-Type,X-Request-ID",
    "CORS_MAX_AGE": 600,
    # requests and routes
    "MAX_CONTENT_LENGTH": 64 * 1024,
    "ROUTES_DIR": str(ROOT / "config" / "routes.d"),
    "ACCESS_LOG": True,
    "DOCS_ENABLED": True,
    "METRICS_ENABLED": True,
    "HSTS_SECONDS": 0,
    # service registry (empty: route without one) and circuit breakers
    "CONSUL_HTTP_ADDR": "",
    "CONSUL_WATCH_WAIT": "30s",
    "CONSUL_TIMEOUT": "3s",
    "RETRY_AFTER_NO_INSTANCE": 5,
    # after a registry outage, "no passing instance" is not believed for this long (routing
    # blindly meanwhile): instances are still registering again
    "CONSUL_REJOIN_GRACE": "45s",
    "BREAKER_FAIL_MAX": 5,
    "BREAKER_RESET_TIMEOUT": 5.0,
}

_CASTS = {bool: as_bool}

# ``${VAR}`` or ``${VAR:default}`` anywhere in a scalar, as nameko's own config loader reads it
_ENV_VAR = re.compile(r"\$\{([^}^{:]+)(?::([^}^{]*))?\}")


class _EnvLoader(yaml.SafeLoader):
    pass


def _expand(loader, node):
    raw = loader.construct_scalar(node)
    value = _ENV_VAR.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), raw)
    if value.strip() == "":
        return None
    return yaml.safe_load(value)


def _expand_raw(loader, node):
    raw = loader.construct_scalar(node)
    return _ENV_VAR.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), raw)


_EnvLoader.add_implicit_resolver("!env_var", re.compile(r"^.*\$\{[^}]*\}.*$"), None)
_EnvLoader.add_constructor("!env_var", _expand)
_EnvLoader.add_constructor("!raw_env_var", _expand_raw)


def read_yaml(path):
    """A YAML config file with ``${VAR:default}`` expanded (empty values become None)."""
    try:
        with open(path) as stream:
            data = yaml.load(stream, Loader=_EnvLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings")
    return data


class Settings(dict):
    """A dict of settings with typed reads: ``settings.get_as("RPC_TIMEOUT", float)``."""

    def get_as(self, key, cast, default=None):
        value = self.get(key)
        if value is None or value == "":
            value = DEFAULTS.get(key, default) if default is None else default
        if value is None:
            return None
        try:
            return _CASTS.get(cast, cast)(value)
        except (TypeError, ValueError):
            raise ConfigError(f"setting {key}={value!r} is not a valid {cast.__name__}") \
                from None

    def get_list(self, key):
        return as_list(self.get(key))


def load(config=None):
    """Defaults, overlaid by the YAML file (``GATEWAY_CONFIG`` or config/gateway.yaml, if
    present), overlaid by ``config``. Empty values in the file keep the default."""
    settings = Settings(DEFAULTS)
    path = Path(os.environ.get(CONFIG_FILE_KEY) or DEFAULT_FILE)
    if (config or {}).get(CONFIG_FILE_KEY):
        path = Path(config[CONFIG_FILE_KEY])
    if path.exists():
        settings.update({k: v for k, v in read_yaml(path).items() if v is not None})
    settings.update(config or {})
    return settings

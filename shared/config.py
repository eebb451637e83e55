"""Configuration helpers: environment, per-service database URIs, secrets."""

import os
from pathlib import Path

__all__ = [
    "DB_URI_KEY",
    "AMQP_URI_KEY",
    "ENVIRONMENT_KEY",
    "var_dir",
    "db_uri",
    "environment",
    "is_production",
    "secret",
    "setting",
    "ConfigError",
]

DB_URI_KEY = "DB_URI"
AMQP_URI_KEY = "AMQP_URI"
ENVIRONMENT_KEY = "PLINTH_ENV"

PLACEHOLDER_SECRETS = {"", "change-me", "changeme", "dev", "development", "secret"}


class ConfigError(RuntimeError):
    """A setting is missing or unsafe; the process refuses to start."""


def var_dir():
    """Where embedded state (SQLite files, locks, logs) lives: ``PLINTH_VAR_DIR`` or ./var."""
    path = Path(os.environ.get("PLINTH_VAR_DIR") or Path.cwd() / "var")
    path.mkdir(parents=True, exist_ok=True)
    return path


def db_uri(service, config=None):
    """The service's database: ``DB_URI`` in its config, ``<SERVICE>_DB_URI``, else SQLite."""
    config = config or {}
    uri = (config.get(DB_URI_KEY) or os.environ.get(f"{service.upper()}_DB_URI") or "").strip()
    if uri:
        return uri
    return f"sqlite:///{var_dir() / (service + '.db')}"


def environment(config=None):
    config = config or {}
    return (config.get(ENVIRONMENT_KEY) or os.environ.get(ENVIRONMENT_KEY) or "development")


def is_production(config=None):
    return environment(config).lower() in {"production", "prod"}


def setting(config, key, default=None, cast=None):
    """Read ``key`` from a nameko config dict, falling back to the environment, then default."""
    value = config.get(key) if config else None
    if value in (None, ""):
        value = os.environ.get(key, default)
    if value in (None, "") or cast is None:
        return value if value != "" else default
    if cast is bool:
        return str(value).lower() in {"1", "true", "yes", "on"}
    return cast(value)


def secret(config, key, development_default=None):
    """A secret from the config or environment.

    Outside production a development default is allowed; in production a missing or
    placeholder value is refused so a deployment cannot run on a well-known secret.
    """
    value = setting(config, key)
    if is_production(config):
        if value is None or str(value).strip().lower() in PLACEHOLDER_SECRETS:
            raise ConfigError(
                f"{key} must be set to a real secret when {ENVIRONMENT_KEY}=production")
        return value
    return value if value else development_default

"""Configuration helpers: environment, per-service database URIs, secrets."""

import logging
import math
import os
import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

__all__ = [
    "DB_URI_KEY",
    "AMQP_URI_KEY",
    "ENVIRONMENT_KEY",
    "var_dir",
    "db_uri",
    "environment",
    "is_production",
    "secret",
    "secret_problem",
    "credentials_problem",
    "require_strong_credentials",
    "setting",
    "as_bool",
    "as_list",
    "list_setting",
    "renamed_setting",
    "amqp_ssl",
    "AMQP_SSL_KEY",
    "ConfigError",
]

log = logging.getLogger(__name__)

DB_URI_KEY = "DB_URI"
AMQP_URI_KEY = "AMQP_URI"
AMQP_SSL_KEY = "AMQP_SSL"
ENVIRONMENT_KEY = "PLINTH_ENV"

# In production a secret must be at least this long and this varied: the Shannon entropy of
# its characters, in bits each. Repeating 4 symbols or fewer gives 2 at most; a random hex
# string of 16 characters gives about 3.3 (below 2.25 about once in 20,000 draws), random
# base64 about 5. Length and the placeholder words do the rest.
MIN_SECRET_LENGTH = 16
MIN_BITS_PER_CHARACTER = 2.25
# well-known values, refused whatever their length
PLACEHOLDER_SECRETS = {"", "change-me", "changeme", "dev", "development", "secret", "guest",
                       "password", "postgres", "plinth", "admin", "test"}
# words that mark a value meant to be replaced: those of the shipped examples (.env.example,
# deploy/k8s/secret.example.yaml) and of development defaults
PLACEHOLDER_MARKS = ("change-me", "changeme", "change_me", "replace-me", "replace_me",
                     "placeholder", "example", "password", "development", "dev-only", "e2e-only",
                     "test-only", "not-a-secret")


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
        return as_bool(value)
    return cast(value)


def as_bool(value):
    """A boolean setting: true for 1, true, yes or on (any case), false for anything else."""
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def as_list(value, separators=","):
    """A list setting given as a YAML list or as one string split on any of ``separators``
    (a space among them stands for any whitespace); blank items are dropped."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        items = value
    else:
        pattern = "[" + re.escape(separators.replace(" ", "")) + \
            (r"\s" if " " in separators else "") + "]"
        items = re.split(pattern, str(value))
    return [str(item).strip() for item in items if str(item).strip()]


def list_setting(config, key, default=(), separators=","):
    """``setting`` read as a list (``as_list``); ``default`` when unset or empty."""
    return as_list(setting(config, key), separators) or list(default)


def renamed_setting(config, key, old_key, default=None, cast=None):
    """``setting(config, key)``, still honouring ``old_key`` (its deprecated name) with a
    warning when only that one is set."""
    if setting(config, key) is None and setting(config, old_key) is not None:
        log.warning("%s is deprecated: set %s instead", old_key, key)
        key = old_key
    return setting(config, key, default, cast)


def amqp_ssl(config=None):
    """The TLS options of broker connections, or None for plain TCP.

    ``AMQP_SSL`` is nameko's own setting, which it hands to kombu as it is: a mapping of
    py-amqp's ssl options (``ca_certs``, ``certfile``, ``keyfile``, ``cert_reqs``: 2 to verify
    the broker's certificate, ``server_hostname``: the name it must carry). Given in the config,
    or in the environment as a YAML mapping (``{ca_certs: /certs/ca.pem, cert_reqs: 2}``);
    every connection of the kernel and the gateway uses the same options.
    """
    value = (config or {}).get(AMQP_SSL_KEY)
    if value in (None, ""):
        text = os.environ.get(AMQP_SSL_KEY, "").strip()
        value = yaml.safe_load(text) if text else None
    if value in (None, False, ""):
        return None
    if value is True:
        return True  # TLS with the default options
    if not isinstance(value, dict):
        raise ConfigError(f"{AMQP_SSL_KEY} must be a mapping of TLS options (ca_certs, "
                          "certfile, keyfile, cert_reqs, server_hostname)")
    return dict(value)


def bits_per_character(text):
    """The Shannon entropy of ``text``'s characters: how varied it is, in bits per character."""
    size = len(text)
    return sum(n / size * math.log2(size / n) for n in Counter(text).values())


def secret_problem(value, min_length=MIN_SECRET_LENGTH):
    """Why ``value`` is unfit to be a production secret (a phrase to follow its name), or None.

    Refused: nothing, a well-known value or one marked as a placeholder (every value the
    repository's examples ship), fewer than ``min_length`` characters, or too little variety.
    """
    text = "" if value is None else str(value)
    if not text.strip():
        return "is not set"
    lowered = text.strip().lower()
    if lowered in PLACEHOLDER_SECRETS or any(mark in lowered for mark in PLACEHOLDER_MARKS):
        return "is a placeholder or a well-known value"
    if len(text) < min_length:
        return f"is shorter than {min_length} characters"
    if bits_per_character(text) < MIN_BITS_PER_CHARACTER:
        return "is too predictable (too few different characters)"
    return None


def secret(config, key, development_default=None, min_length=MIN_SECRET_LENGTH):
    """A secret from the config or environment.

    Outside production a development default is allowed; in production a value that
    ``secret_problem`` finds unfit is refused, so a deployment cannot run on a well-known,
    short or guessable secret.
    """
    value = setting(config, key)
    if is_production(config):
        problem = secret_problem(value, min_length)
        if problem is not None:
            raise ConfigError(f"{key} must be set to a real secret when {ENVIRONMENT_KEY}="
                              f"production: it {problem} (generate one with: openssl rand "
                              "-base64 32)")
        return value
    return value if value else development_default


def _uris(value):
    # kombu takes several broker URIs separated by ";" (failover)
    return [part.strip() for part in str(value or "").split(";") if part.strip()]


def credentials_problem(uri):
    """Why the credentials in a connection URI are unfit for production, or None.

    A password given in the URI must pass ``secret_problem``; an AMQP URI needs credentials
    other than RabbitMQ's guest account (kombu falls back to guest:guest without any).
    Databases and Redis may authenticate otherwise (certificates, .pgpass, the network).
    """
    try:
        parts = urlsplit(uri)
        username, password = parts.username, parts.password
    except ValueError:
        return "is not a valid URI"
    if "amqp" in parts.scheme and (not username or unquote(username) == "guest"):
        return "uses RabbitMQ's guest account (give the URI a user and password of its own)"
    if password is None:
        return None
    problem = secret_problem(unquote(password))
    return f"has a password that {problem}" if problem else None


def require_strong_credentials(config, uris):
    """In production, refuse to start when a URI of ``uris`` (``{setting name: uri}``) carries
    weak credentials (``credentials_problem``). The error never shows the URI itself."""
    if not is_production(config):
        return
    for name, value in uris.items():
        for uri in _uris(value):
            problem = credentials_problem(uri)
            if problem is not None:
                raise ConfigError(f"{name} {problem} ({ENVIRONMENT_KEY}=production)")

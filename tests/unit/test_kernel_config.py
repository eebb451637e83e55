"""Production secrets and credentials (shared/config.py): long, varied, never a shipped example
value; development stays easy."""

import re
import secrets
from pathlib import Path

import pytest
import yaml

from gateway.app import create_app
from shared.config import (
    ConfigError,
    as_bool,
    as_list,
    credentials_problem,
    list_setting,
    renamed_setting,
    require_strong_credentials,
    secret,
    secret_problem,
    setting,
)

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = {"PLINTH_ENV": "production"}
STRONG = secrets.token_urlsafe(32)


def _env_example_secrets():
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and re.search(r"(PASSWORD|SECRET)$", name):
            values[name] = value
    return values


def _k8s_example():
    return yaml.safe_load((ROOT / "deploy/k8s/secret.example.yaml").read_text())["stringData"]


@pytest.mark.parametrize("name, value", sorted(_env_example_secrets().items()))
def test_every_secret_value_of_the_env_example_is_refused_in_production(name, value):
    assert secret_problem(value) is not None
    with pytest.raises(ConfigError, match=f"{name} must be set to a real secret"):
        secret({**PRODUCTION, name: value}, name)


@pytest.mark.parametrize("name", sorted(k for k in _k8s_example() if not k.endswith("email")))
def test_every_value_of_the_k8s_secret_example_is_refused_in_production(name):
    value = _k8s_example()[name]
    if name.endswith("-uri"):
        assert credentials_problem(value) is not None, value
    else:
        assert secret_problem(value) is not None, value


@pytest.mark.parametrize("value, problem", [
    (None, "is not set"), ("", "is not set"), ("   ", "is not set"),
    ("change-me", "placeholder"), ("CHANGEME", "placeholder"), ("guest", "placeholder"),
    ("change-me-to-at-least-32-random-characters", "placeholder"),
    ("plinth-development-only-key-encryption-secret", "placeholder"),
    ("my-example-secret-value-of-some-length", "placeholder"),
    ("Xk4-pQ9-zW2", "shorter than 16"),
    ("a" * 64, "too predictable"), ("ab" * 32, "too predictable"),
    ("0101010101010101" * 4, "too predictable"), ("0123" * 8, "too predictable"),
    ("passwordpassword", "placeholder"),
])
def test_weak_secrets_are_refused_with_their_reason(value, problem):
    assert problem in secret_problem(value)


@pytest.mark.parametrize("value", [
    STRONG, secrets.token_hex(16), "9f86d081884c7d65", "6829664088239809",
    "Quartz-Meadow-Signal-8812", "s3cr3t-value-long",
])
def test_random_or_varied_secrets_are_accepted(value):
    assert secret_problem(value) is None
    assert secret({**PRODUCTION, "KEY": value}, "KEY") == value


def test_a_longer_minimum_is_a_callers_choice():
    assert "shorter than 32" in secret_problem("Quartz-Meadow-Signal-8812", min_length=32)


def test_development_takes_any_value_or_the_development_default():
    assert secret({"KEY": "change-me"}, "KEY") == "change-me"
    assert secret({}, "NOT_SET_ANYWHERE_KEY", development_default="dev") == "dev"
    require_strong_credentials({}, {"AMQP_URI": "amqp://guest:guest@127.0.0.1:5672/"})


@pytest.mark.parametrize("uri, problem", [
    ("amqp://guest:guest@rabbitmq:5672/", "guest account"),
    ("amqp://rabbitmq:5672/", "guest account"),
    (f"amqp://plinth:{STRONG}@a:5672/;amqp://guest:guest@b:5672/", "guest account"),
    ("amqp://plinth:change-me@rabbitmq:5672/", "password that is a placeholder"),
    ("postgresql://identity_app:Zq9xK-7@postgres:5432/plinth", "shorter than 16"),
    ("redis://:aaaaaaaaaaaaaaaaaaaaaaaa@redis:6379/0", "too predictable"),
    ("rediss://default:changeme@redis:6379/0", "placeholder"),
])
def test_weak_credentials_in_a_uri_are_refused_in_production_without_showing_them(uri,
                                                                                  problem):
    with pytest.raises(ConfigError) as info:
        require_strong_credentials(PRODUCTION, {"SOME_URI": uri})
    message = str(info.value)
    assert message.startswith("SOME_URI ") and problem in message
    for password in ("change-me", "Zq9xK-7", "a" * 24, "changeme", STRONG):
        assert password not in message


@pytest.mark.parametrize("uri", [
    f"amqp://plinth:{STRONG}@rabbitmq:5672/", f"amqps://plinth:{STRONG}@rabbitmq:5671/plinth",
    "postgresql://identity_app@postgres:5432/plinth",  # certificate or .pgpass
    f"postgresql://identity_app:{STRONG}@postgres:5432/plinth", "redis://redis:6379/0",
    "memory://", "sqlite:////var/lib/plinth/identity.db",
])
def test_strong_or_absent_passwords_are_accepted(uri):
    require_strong_credentials(PRODUCTION, {"SOME_URI": uri})


def test_the_gateway_refuses_weak_broker_or_redis_credentials_in_production():
    with pytest.raises(ConfigError, match="AMQP_URI uses RabbitMQ's guest account"):
        create_app({**PRODUCTION, "AMQP_URI": "amqp://guest:guest@127.0.0.1:5672/"})
    with pytest.raises(ConfigError, match="RATELIMIT_STORAGE_URI has a password"):
        create_app({**PRODUCTION, "AMQP_URI": f"amqp://plinth:{STRONG}@127.0.0.1:1/",
                    "RATELIMIT_STORAGE_URI": "redis://:change-me@127.0.0.1:1/0"})


def test_list_settings_accept_strings_and_lists():
    assert as_list("identity, auth,authz  billing", ", ") == ["identity", "auth", "authz",
                                                              "billing"]
    assert as_list("a, b c") == ["a", "b c"]  # commas only, unless told otherwise
    assert as_list(["a", " b ", ""]) == ["a", "b"]
    assert as_list(None) == as_list("") == []
    assert list_setting({"TAGS": ""}, "TAGS", ("x",)) == ["x"]
    assert list_setting({"TAGS": "p, q"}, "TAGS") == ["p", "q"]


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), (" Yes ", True),
                                             ("ON", True), (True, True), ("0", False),
                                             ("false", False), ("no", False), (False, False)])
def test_boolean_settings_read_the_usual_words(value, expected):
    assert as_bool(value) is expected
    assert setting({"FLAG": value}, "FLAG", cast=bool) is expected


def test_a_renamed_setting_still_reads_its_old_name_with_a_warning(caplog):
    assert renamed_setting({"NEW": "3"}, "NEW", "OLD", 1.0, float) == 3.0
    assert renamed_setting({"NEW": "3", "OLD": "4"}, "NEW", "OLD", 1.0, float) == 3.0
    assert not caplog.records
    assert renamed_setting({"OLD": "4"}, "NEW", "OLD", 1.0, float) == 4.0
    assert "OLD is deprecated: set NEW instead" in caplog.text
    assert renamed_setting({}, "NEW", "OLD", 1.0, float) == 1.0

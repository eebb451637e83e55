"""Keep secrets out of the trail, and make what is kept storable and hashable.

A key is redacted when one of its words (``accessToken``, ``access-token`` and
``ACCESS_TOKEN`` are all the words ``access`` and ``token``) is a secret word such as password,
token, secret or cookie, or when its last word is key or hash (``private_key``,
``password_hash``; ``key_id`` is kept). Values holding, anywhere, something that looks like a
bearer token, a JWT, auth's opaque refresh token, a password hash or a private key are
redacted under any key. Deployments add their own words
(``AUDIT_REDACT_KEYS``); the built-in ones always apply.

The same walk makes the data safe to store: NUL characters and unpaired surrogates (which
PostgreSQL text refuses) are replaced, non-finite floats become strings, and nesting is cut
at a fixed depth.
"""

import math
import re

__all__ = ["REDACTED", "TRUNCATED", "SECRET_WORDS", "SECRET_LAST_WORDS", "Redactor",
           "clean_text", "key_words", "looks_secret"]

REDACTED = "[REDACTED]"
TRUNCATED = "[TRUNCATED]"
MAX_DEPTH = 32

SECRET_WORDS = frozenset({
    "password", "passwords", "passwd", "pwd", "passphrase", "secret", "secrets", "token",
    "tokens", "credential", "credentials", "cookie", "cookies", "authorization", "apikey",
    "jwt", "accesstoken", "refreshtoken", "privatekey", "secretkey",
})
SECRET_LAST_WORDS = frozenset({"key", "keys", "hash", "hashes", "pem"})

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[^a-z0-9]+")
# anywhere in a string ("token=eyJ...", "Authorization: Bearer ..."), not only at its start
_SECRET_VALUE = re.compile(
    r"(?<![\w-])eyJ[\w-]*\.[\w-]+\."  # a JWT: its header is base64url of '{"'
    r"|\b(?i:bearer)\s+[\w.~+/-]{16,}"  # the credentials of an Authorization header
    r"|\$argon2|\$2[aby]\$\d\d\$|\$scrypt\$|\bpbkdf2_sha\d+\$"  # password hashes
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)
# auth's opaque refresh token: 256 random bits as 43 URL-safe base64 characters. A run of
# exactly 43 of them with both cases in it is taken for one (a random token lacks a case with
# a probability of about 1e-9; the names and ids the platform writes are lower case or UUIDs)
_OPAQUE_TOKEN = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
OPAQUE_TOKEN_LENGTH = 43
_UPPER, _LOWER = re.compile(r"[A-Z]"), re.compile(r"[a-z]")


def looks_secret(text):
    """Whether ``text`` holds something shaped like a token, a password hash or a key."""
    if _SECRET_VALUE.search(text):
        return True
    if len(text) < OPAQUE_TOKEN_LENGTH:
        return False
    return any(_UPPER.search(run) and _LOWER.search(run) for run in _OPAQUE_TOKEN.findall(text))


def key_words(key):
    """The lower-case words of a key: ``refreshToken`` and ``refresh-token`` alike."""
    return [w for w in _SEPARATORS.split(_CAMEL.sub("_", key).lower()) if w]


def clean_text(text):
    """``text`` without NUL and unpaired surrogates, which PostgreSQL cannot store."""
    if text.isascii() and "\x00" not in text:
        return text
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class Redactor:
    """Applies the redaction list to event data; ``extra_keys`` adds deployment words."""

    def __init__(self, extra_keys=()):
        extra = set()
        for key in extra_keys:
            extra.update(key_words(str(key)))
        self.words = SECRET_WORDS | extra
        self._verdicts = {}

    def is_secret_key(self, key):
        verdict = self._verdicts.get(key)
        if verdict is None:
            words = key_words(key)
            verdict = bool(words) and (not self.words.isdisjoint(words)
                                       or words[-1] in SECRET_LAST_WORDS)
            if len(self._verdicts) < 10_000:  # keys repeat; bound the cache all the same
                self._verdicts[key] = verdict
        return verdict

    def clean(self, value, depth=0):
        """A redacted, storable copy of a JSON-like ``value``."""
        kind = type(value)  # exact types first: this runs for every value of every event
        if kind is str:
            if looks_secret(value):
                return REDACTED
            return value if value.isascii() and "\x00" not in value else clean_text(value)
        if value is None or kind is int or kind is bool:
            return value
        if kind is dict or isinstance(value, dict):
            if depth >= MAX_DEPTH:
                return TRUNCATED
            verdicts, cleaned = self._verdicts, {}
            for key, item in value.items():
                secret = verdicts.get(key) if type(key) is str else None
                if secret is None:  # not seen yet (only clean text keys are remembered)
                    key = clean_text(key if isinstance(key, str) else str(key))
                    secret = self.is_secret_key(key)
                cleaned[key] = REDACTED if secret else self.clean(item, depth + 1)
            return cleaned
        if kind is list or isinstance(value, list | tuple):
            if depth >= MAX_DEPTH:
                return TRUNCATED
            return [self.clean(item, depth + 1) for item in value]
        if isinstance(value, str):
            return self.clean(str(value), depth)
        if isinstance(value, bool | int):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else str(value)
        return clean_text(str(value))

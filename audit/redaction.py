"""Keep secrets out of the trail, and make what is kept storable and hashable.

A key is redacted when one of its words (``accessToken``, ``access-token`` and
``ACCESS_TOKEN`` are all the words ``access`` and ``token``) is a secret word such as password,
token, secret or cookie, or when its last word is key or hash (``private_key``,
``password_hash``; ``key_id`` is kept). Values that look like a bearer token, a JWT, a
password hash or a private key are redacted under any key. Deployments add their own words
(``AUDIT_REDACT_KEYS``); the built-in ones always apply.

The same walk makes the data safe to store: NUL characters and unpaired surrogates (which
PostgreSQL text refuses) are replaced, non-finite floats become strings, and nesting is cut
at a fixed depth.
"""

import math
import re

__all__ = ["REDACTED", "TRUNCATED", "SECRET_WORDS", "SECRET_LAST_WORDS", "Redactor",
           "clean_text", "key_words"]

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
_SECRET_VALUE = re.compile(
    r"^(?:eyJ[\w-]*\.[\w-]+\.|(?i:bearer)\s+[\w.~+/-]{16,}=*$|\$argon2|\$2[aby]\$|\$scrypt\$|"
    r"pbkdf2_sha\d+\$)|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)


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
            if _SECRET_VALUE.search(value):
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

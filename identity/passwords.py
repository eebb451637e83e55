"""Password hashing (argon2id) and the password policy."""

from functools import cache
from pathlib import Path

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# OWASP's floor for argon2id is m=19 MiB, t=2, p=1; these defaults sit above it.
DEFAULT_TIME_COST = 2
DEFAULT_MEMORY_KIB = 65536
DEFAULT_PARALLELISM = 1
MIN_LENGTH = 10
MAX_LENGTH = 256


@cache
def common_passwords():
    path = Path(__file__).with_name("common_passwords.txt")
    lines = path.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip().lower() for line in lines
                     if line.strip() and not line.startswith("#"))


def policy_problems(password, min_length=MIN_LENGTH, email=None):
    """What is wrong with ``password`` under the policy, as messages (empty when fine)."""
    if not isinstance(password, str):
        return ["must be a string"]
    problems = []
    if len(password) < min_length:
        problems.append(f"must be at least {min_length} characters")
    if len(password) > MAX_LENGTH:
        problems.append(f"must be at most {MAX_LENGTH} characters")
    lowered = password.lower()
    if lowered in common_passwords():
        problems.append("is too common; choose one that is not on lists of leaked passwords")
    elif len(set(password)) < 4:
        problems.append("uses too few different characters")
    if email and isinstance(email, str):
        local = email.split("@", 1)[0].lower()
        if len(local) >= 4 and (lowered == email.lower() or local in lowered):
            problems.append("must not contain your email address")
    return problems


class Hasher:
    """argon2id hashing whose CPU-heavy calls can run off the event loop (``offload``)."""

    def __init__(self, time_cost=DEFAULT_TIME_COST, memory_kib=DEFAULT_MEMORY_KIB,
                 parallelism=DEFAULT_PARALLELISM, offload=None, min_length=MIN_LENGTH):
        self.min_length = min_length
        self.hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib,
                                     parallelism=parallelism, type=Type.ID)
        self._offload = offload or (lambda fn, *args: fn(*args))
        # verified when the email is unknown, so both answers cost one argon2 verification
        self.dummy_hash = self.hasher.hash("plinth-timing-equaliser")

    def problems(self, password, email=None):
        return policy_problems(password, self.min_length, email)

    def hash(self, password):
        return self._offload(self.hasher.hash, password)

    def verify(self, password_hash, password):
        """True when ``password`` matches; False for a mismatch or an unusable hash."""
        try:
            return self._offload(self.hasher.verify, password_hash or self.dummy_hash, password) \
                and password_hash is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash):
        try:
            return self.hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

from eventlet import tpool
from nameko.extensions import DependencyProvider

from identity import passwords
from shared.config import setting

ARGON2_TIME_COST_KEY = "ARGON2_TIME_COST"
ARGON2_MEMORY_KIB_KEY = "ARGON2_MEMORY_KIB"
ARGON2_PARALLELISM_KEY = "ARGON2_PARALLELISM"
PASSWORD_MIN_LENGTH_KEY = "PASSWORD_MIN_LENGTH"


class Passwords(DependencyProvider):
    """argon2id hasher configured from the service config; hashing runs in OS threads.

    argon2 releases the GIL, so running it in eventlet's thread pool keeps the service's
    event loop answering while hashes are computed on every core.
    """

    def setup(self):
        config = self.container.config
        self.hasher = passwords.Hasher(
            time_cost=setting(config, ARGON2_TIME_COST_KEY, passwords.DEFAULT_TIME_COST, int),
            memory_kib=setting(config, ARGON2_MEMORY_KIB_KEY, passwords.DEFAULT_MEMORY_KIB, int),
            parallelism=setting(config, ARGON2_PARALLELISM_KEY, passwords.DEFAULT_PARALLELISM,
                                int),
            offload=tpool.execute,
            min_length=setting(config, PASSWORD_MIN_LENGTH_KEY, passwords.MIN_LENGTH, int),
        )

    def get_dependency(self, worker_ctx):
        return self.hasher

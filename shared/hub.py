"""The per-container hub through which the kernel's providers find each other.

Like nameko's ``RpcConsumer``, it is a ``SharedExtension``: every provider that declares
``hub = Hub()`` as a class attribute gets the container's one instance, registers with it in
``setup()`` and reads what the others registered from ``start()`` on (nameko sets every
extension up before it starts any). Nothing here imports another kernel module, so providers
depend on the hub and never on each other.
"""

from nameko.extensions import SharedExtension

__all__ = ["Hub"]


class Hub(SharedExtension):
    """What one container's providers share: its databases, what ``/health`` shows of each
    provider, and what must happen the moment the container begins to stop."""

    def __init__(self):
        self.databases = []
        self.infos = []  # callables returning a dict merged into /health's body
        self.ready_infos = []  # the same, also in /health/ready's body
        self.advisories = []  # callables returning a Check: shown, never failing readiness
        self.on_stopping = []  # callables(timeout) run before in-flight workers drain

    # -- registering (in setup) -------------------------------------------------------------

    def add_database(self, database):
        self.databases.append(database)

    def add_info(self, info):
        self.infos.append(info)

    def add_ready_info(self, info):
        self.ready_infos.append(info)

    def add_advisory(self, check):
        self.advisories.append(check)

    def add_stopping(self, hook, first=False):
        """``hook(timeout)`` runs when the container begins to stop; ``first`` hooks (failing
        readiness) run before the others (leaving the registry), whatever the setup order."""
        if first:
            self.on_stopping.insert(0, hook)
        else:
            self.on_stopping.append(hook)

    # -- reading (from start on) ------------------------------------------------------------

    def database(self):
        """The container's one database provider (a method, not a property: nameko reads
        every attribute of an extension while it binds, before anything is registered)."""
        if len(self.databases) != 1:
            raise RuntimeError(f"{self.container.service_name} declares {len(self.databases)} "
                               "Database dependencies where one was expected")
        return self.databases[0]

    def info(self):
        return _merged(self.infos)

    def ready_info(self):
        return _merged(self.ready_infos)

    def run_advisories(self):
        return [check() for check in self.advisories]

    def stopping(self, timeout=None):
        """The container begins to stop: tell every provider that asked (see DeregisterFirst)."""
        for hook in self.on_stopping:
            hook(timeout)


def _merged(infos):
    merged = {}
    for info in infos:
        merged.update(info())
    return merged

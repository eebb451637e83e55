"""The tasks one service may ask of another: the wire contract of cross-service tasks.

A service may always dispatch the tasks it declares a handler for (``@task`` in its own
package). Asking *another* service for work is a contract between the two, like an RPC
method: the name must be listed here, with what it does, or ``dispatch`` refuses it with
``shared.tasks.UnknownTask`` before anything is written. Add a line here when a service starts
accepting a task from others; remove it only once no service dispatches it any more.
"""

__all__ = ["KNOWN_TASKS"]

KNOWN_TASKS = {
    # task name: what the owning service does with it (its ``data``)
    "audit.export.generate": "write the export audit.start_export recorded ({export_id}) to "
                             "its NDJSON file",
}

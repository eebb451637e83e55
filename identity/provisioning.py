"""Provisioning a user with roles: a saga run by identity (SPEC §8).

Step ``create_user`` creates the user in identity (compensation: delete it, which frees the
email and makes authz drop whatever the user holds); step ``assign_roles`` asks authz to
assign each role, one call per role (compensation: take back the roles this saga gave).

Both steps are idempotent on retry. The user's id is chosen when the saga starts, so creating
it again after a crash finds the user it made (an id is never reused). authz's
``assign_role`` is idempotent by nature: assigning what the user holds changes nothing and
answers ``created: false``, which is also why compensation only takes back the roles whose
answer said ``created: true``.
"""

from identity import users
from shared.errors import Conflict
from shared.ids import uuid7
from shared.sagas import COMPENSATED, COMPLETED, FAILED, LocalAction, RpcAction, Saga, Step
from shared.sagas import error_from as saga_error

__all__ = ["PROVISION_USER", "prepare", "answer"]


def _create_user(uow, saga, key):
    data = saga["input"]
    try:
        user = users.create(uow, None, {
            "id": data["user_id"], "email": data["email"],
            "password_hash": data["password_hash"], "display_name": data["display_name"]})
    except Conflict as exc:
        existing = users.get(uow, data["user_id"], include_deleted=True) \
            if "id" in exc.details else None
        if existing is None or existing.status == "deleted":
            raise
        user = existing  # this saga made it before a crash: the step is done
    return users.to_dict(user)


def _delete_user(uow, saga, key):
    user = users.get(uow, saga["input"]["user_id"], include_deleted=True)
    if user.status != "deleted":
        # the saga made this user a moment ago and took back its roles (reverse order): no
        # last-administrator question arises, so authz is not asked
        users.delete(uow, user.id)
    return {"deleted": user.id}


def _assignments(saga):
    data = saga["input"]
    return [{"user_id": data["user_id"], "role": item["role"], "scope": item["scope"]}
            for item in data["assignments"]]


def _given(saga):
    done = saga["results"].get("assign_roles") or saga["partial"].get("assign_roles") or []
    return [{"user_id": a["user_id"], "role": a["role"], "scope": a["scope"]}
            for a in done if a.get("created")]


PROVISION_USER = Saga("provision_user", private=("password_hash",), steps=[
    Step("create_user", LocalAction(_create_user), compensation=LocalAction(_delete_user),
         timeout=10.0),
    Step("assign_roles", RpcAction("authz", "assign_role", each=_assignments),
         compensation=RpcAction("authz", "unassign_role", each=_given), timeout=5.0),
])


def prepare(uow, hasher, payload):
    """The saga's input: checked (password policy, email free) and with the password hashed,
    so that no password is ever stored."""
    email = payload["email"].strip()
    users.require_password(hasher, payload["password"], email)
    if users.by_email(uow, email) is not None:
        raise users.email_taken(email)
    assignments, seen = [], set()
    items = [{"role": r, "scope": None} for r in payload["roles"]] + payload["scoped_roles"]
    for item in items:
        key = (item["role"], item["scope"])
        if key not in seen:
            seen.add(key)
            assignments.append({"role": item["role"], "scope": item["scope"]})
    return {"user_id": uuid7(), "email": email, "display_name": payload["display_name"],
            "password_hash": hasher.hash(payload["password"]), "assignments": assignments}


def answer(saga):
    """What the caller gets: the user and its roles once completed; the failing step's error
    (with the saga id) once compensated or failed; else the saga, still running."""
    if saga["status"] == COMPLETED:
        user = saga["results"]["create_user"]
        roles = [{"role": a["role"], "scope": a["scope"]}
                 for a in saga["results"]["assign_roles"]]
        return {**user, "roles": roles, "saga_id": saga["id"]}
    if saga["status"] in (COMPENSATED, FAILED) and saga["error"]:
        error = saga_error(saga["error"], saga["id"])
        item = saga["error"].get("item") or {}
        if item.get("role"):
            error.details.setdefault("role", item["role"])
            if item.get("scope"):
                error.details.setdefault("scope", item["scope"])
        error.details["saga_status"] = saga["status"]
        raise type(error)(error.message, error.details)
    return {"accepted": True, "saga_id": saga["id"], "status": saga["status"]}

"""The identity domain: plain functions over a unit of work, callable without a container."""

import base64
import binascii
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from identity.models import User
from identity.schemas import UserSchema
from shared.errors import Conflict, Invalid, NotFound, Unauthorized
from shared.ids import is_uuid, uuid7

INVALID_CREDENTIALS = "invalid email or password"
_user_schema = UserSchema()


def now():
    return datetime.now(UTC)


def normalise_email(email):
    return email.strip().lower()


def to_dict(user):
    return _user_schema.dump(user)


def public_fields(user):
    return {"email": user.email, "display_name": user.display_name, "type": user.type,
            "status": user.status}


def check_id(user_id, field="user_id"):
    if not is_uuid(user_id):
        raise Invalid(f"{field} is not a valid id", {field: ["not a valid UUID"]})
    return user_id


def get(uow, user_id, lock=False, include_deleted=False):
    check_id(user_id)
    query = sa.select(User).where(User.id == user_id)
    if lock:
        query = query.with_for_update()
    user = uow.session.scalars(query).first()
    if user is None or (user.status == "deleted" and not include_deleted):
        raise _not_found(user_id)
    return user


_by_id = sa.select(User.__table__).where(User.__table__.c.id == sa.bindparam("user_id"))


def read(uow, user_id):
    """``get`` for a caller that only reads: a Core row instead of an ORM object."""
    check_id(user_id)
    rows = uow.read(_by_id, {"user_id": user_id})
    if not rows or rows[0].status == "deleted":
        raise _not_found(user_id)
    return rows[0]


def _not_found(user_id):
    return NotFound(f"user {user_id} not found", {"user_id": user_id})


def by_email(uow, email):
    if not isinstance(email, str) or not email.strip() or len(email) > 320:
        raise Invalid("email is not valid", {"email": ["not a valid email address"]})
    return uow.session.scalars(
        sa.select(User).where(User.email_normalized == normalise_email(email))).first()


def require_password(hasher, password, email, field="password"):
    problems = hasher.problems(password, email)
    if problems:
        raise Invalid(f"{field} does not meet the password policy", {field: problems})


def email_taken(email):
    return Conflict(f"a user with email {email} already exists", {"email": ["already taken"]})


def id_taken(user_id):
    return Conflict(f"a user with id {user_id} exists or existed", {"id": ["already taken"]})


def _id_exists(uow, user_id):
    """Whether a user (deleted ones included) has ever had this id."""
    return uow.session.scalar(sa.select(sa.func.count()).select_from(User)
                              .where(User.id == user_id)) > 0


def commit_unique(uow, email, event_type, subject, data, new_id=None):
    """Emit and commit; the unique indexes turn a lost race into a Conflict (on the id when
    the caller chose a ``new_id`` another transaction took, else on the email)."""
    try:
        uow.session.flush()
        uow.emit(event_type, subject, data)
        uow.commit()
    except IntegrityError:
        uow.rollback()
        if new_id is not None and _id_exists(uow, new_id):
            raise id_taken(new_id) from None
        raise email_taken(email) from None


def create(uow, hasher, data):
    """A new active user. ``data["id"]``, when a caller chose it, must never have been used:
    an id seen before (even of a deleted user) is a Conflict on ``id``, checked before the
    email, so a caller retrying its own creation learns that it happened."""
    email = data["email"].strip()
    if data.get("password") is not None:
        require_password(hasher, data["password"], email)
    chosen_id = data.get("id")
    if chosen_id is not None and _id_exists(uow, chosen_id):
        raise id_taken(chosen_id)
    if by_email(uow, email) is not None:
        raise email_taken(email)
    stamp = now()
    # a saga keeps only the hash of the password it was given (identity/provisioning.py)
    hashed = data.get("password_hash") or (
        hasher.hash(data["password"]) if data.get("password") else None)
    user = User(
        id=chosen_id or uuid7(), email=email, email_normalized=normalise_email(email),
        display_name=data.get("display_name") or "", status="active",
        type=data.get("type", "user"),
        password_hash=hashed,
        created_at=stamp, updated_at=stamp,
        password_changed_at=stamp if hashed else None,
    )
    uow.session.add(user)
    commit_unique(uow, email, "user.created", user.id, public_fields(user), new_id=chosen_id)
    return user


def update(uow, user_id, changes):
    user = get(uow, user_id, lock=True)
    applied = {}
    if "email" in changes:
        email = changes["email"].strip()
        if normalise_email(email) != user.email_normalized:
            user.email, user.email_normalized = email, normalise_email(email)
            applied["email"] = email
        elif email != user.email:
            user.email = email
            applied["email"] = email
    if "display_name" in changes and changes["display_name"] != user.display_name:
        user.display_name = changes["display_name"]
        applied["display_name"] = user.display_name
    if applied:
        user.updated_at = now()
        commit_unique(uow, user.email, "user.updated", user.id, {"changes": applied})
    return user


def set_password(uow, hasher, user_id, password, by):
    user = get(uow, user_id, lock=True)
    field = "new_password" if by == "self" else "password"
    require_password(hasher, password, user.email, field)
    stamp = now()
    user.password_hash = hasher.hash(password)
    user.password_changed_at = user.updated_at = stamp
    uow.emit("user.password_changed", user.id, {"by": by})
    uow.commit()
    return user


def change_password(uow, hasher, user_id, old_password, new_password):
    user = get(uow, user_id)
    if not hasher.verify(user.password_hash, old_password):
        raise Unauthorized("the current password is not correct",
                           {"old_password": ["does not match"]})
    if old_password == new_password:
        raise Invalid("the new password must differ from the current one",
                      {"new_password": ["must differ from the current password"]})
    return set_password(uow, hasher, user_id, new_password, by="self")


def keep_an_administrator(uow, user_id, admin_ids):
    """Refuse (Conflict) to disable or delete the last active administrator.

    ``admin_ids``: who holds ``admin`` globally, as authz says. Every administrator's row is
    locked, in id order, before any is counted: two transactions disabling two administrators
    at once take turns, and the second counts what the first committed. Call it before
    locking the user's own row, so that the locks are always taken in the same order.
    """
    admin_ids = sorted(set(admin_ids))
    if user_id not in admin_ids:
        return
    rows = uow.session.execute(sa.select(User.id, User.status).where(User.id.in_(admin_ids))
                               .order_by(User.id).with_for_update()).all()
    status = {row.id: row.status for row in rows}
    if status.get(user_id) != "active":
        return  # not an active administrator: disabling or deleting them takes none away
    if not any(s == "active" for uid, s in status.items() if uid != user_id):
        raise Conflict("this is the last active administrator; make someone else admin "
                       "first", {"user_id": ["last active administrator"]})


def set_status(uow, user_id, status, admin_ids=()):
    """Enable or disable; disabling the last active administrator is refused."""
    check_id(user_id)
    if status == "disabled":
        keep_an_administrator(uow, user_id, admin_ids)
    user = get(uow, user_id, lock=True)
    if user.status == status:
        return user
    user.status, user.updated_at = status, now()
    if status == "disabled":
        uow.emit("user.disabled", user.id, {})
    else:
        uow.emit("user.updated", user.id, {"changes": {"status": status}})
    uow.commit()
    return user


def delete(uow, user_id, admin_ids=()):
    """Soft delete: the row stays (ids in audit still resolve) with personal data scrubbed.
    Deleting the last active administrator is refused."""
    check_id(user_id)
    keep_an_administrator(uow, user_id, admin_ids)
    user = get(uow, user_id, lock=True)
    stamp = now()
    user.email = user.email_normalized = f"deleted-{user.id}@deleted.invalid"
    user.display_name = ""
    user.password_hash = None
    user.status = "deleted"
    user.deleted_at = user.updated_at = stamp
    uow.emit("user.deleted", user.id, {})
    uow.commit()
    return user


def verify(uow, hasher, email, password):
    """The user for these credentials, or one generic error costing the same either way."""
    user = by_email(uow, email) if isinstance(email, str) and len(email) <= 320 else None
    usable = user is not None and user.status == "active" and user.password_hash
    # always one argon2 verification, against a dummy hash when there is no usable user
    matches = hasher.verify(user.password_hash if usable else None, password)
    if not (usable and matches):
        raise Unauthorized(INVALID_CREDENTIALS)
    if hasher.needs_rehash(user.password_hash):
        user.password_hash = hasher.hash(password)
        uow.commit()
    return user


def encode_cursor(user_id):
    return base64.urlsafe_b64encode(user_id.encode()).decode().rstrip("=")


def decode_cursor(cursor):
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        user_id = base64.urlsafe_b64decode(padded.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        user_id = None
    if not is_uuid(user_id):
        raise Invalid("cursor is not valid", {"cursor": ["not a cursor from a previous page"]})
    return user_id


def page(uow, filters):
    """One page of users in creation order (ids are time-ordered), plus the next cursor."""
    query = sa.select(User).order_by(User.id).limit(filters["limit"] + 1)
    if filters.get("status"):
        query = query.where(User.status == filters["status"])
    else:
        query = query.where(User.status != "deleted")
    if filters.get("type"):
        query = query.where(User.type == filters["type"])
    if filters.get("email"):
        query = query.where(User.email_normalized == normalise_email(filters["email"]))
    if filters.get("q"):
        needle = "%" + filters["q"].lower().replace("\\", "\\\\").replace("%", "\\%") \
            .replace("_", "\\_") + "%"
        query = query.where(sa.or_(User.email_normalized.like(needle, escape="\\"),
                                   sa.func.lower(User.display_name).like(needle, escape="\\")))
    if filters.get("cursor"):
        query = query.where(User.id > decode_cursor(filters["cursor"]))
    users = uow.session.scalars(query).all()
    more = len(users) > filters["limit"]
    users = users[: filters["limit"]]
    return {"items": [to_dict(u) for u in users],
            "next_cursor": encode_cursor(users[-1].id) if more and users else None}

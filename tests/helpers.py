"""Builders for test data, shared by every tier."""

import uuid

STRONG_PASSWORD = "violet-Lantern-42-orbit"
OTHER_PASSWORD = "quiet-Harbor-17-meadow"


def new_email(tag="user"):
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.test"


def new_user(rpc, **fields):
    data = {"email": new_email(), "password": STRONG_PASSWORD, "display_name": "Test User"}
    data.update(fields)
    return rpc.call("identity", "create_user", kwargs=data)

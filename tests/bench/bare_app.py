"""The baseline of bench_gateway: a bare Flask JSON endpoint, served by gunicorn exactly as
the gateway is (deploy/gunicorn.conf.py: same workers, threads and logging)."""

from flask import Flask, jsonify

app = Flask("bare")
USER = {"id": "0190c0de-0000-7000-8000-000000000001", "email": "bench@example.test",
        "display_name": "Bench", "status": "active", "type": "user",
        "created_at": "2026-11-22T09:00:00+00:00", "updated_at": "2026-11-22T09:00:00+00:00",
        "password_changed_at": "2026-11-22T09:00:00+00:00", "deleted_at": None}


@app.get("/api/v1/users/me")
def me():
    return jsonify(USER)

#!/bin/sh
# Run one Plinth process: a service by name, the gateway, or the migrations.
set -eu
role="${1:-gateway}"
case "$role" in
  gateway)
    export GATEWAY_BIND="${GATEWAY_BIND:-0.0.0.0:${PORT:-8000}}"
    exec gunicorn -c deploy/gunicorn.conf.py gateway.wsgi:app
    ;;
  migrate)
    # apply every service's migrations as the schema owners, then narrow the app roles
    python -m shared.migrations ${SERVICES:-identity auth authz audit}
    # each service's credential for its service tokens (<SVC>_SERVICE_CREDENTIAL), kept hashed
    python -m auth.credentials register ${SERVICES:-identity auth authz audit}
    exec python -m deploy.grants
    ;;
  broker-users)
    # each process's RabbitMQ user and permissions (deploy/broker_users.py)
    exec python -m deploy.broker_users
    ;;
  -*|sh|bash|python)
    exec "$@"
    ;;
  *)
    if [ ! -f "config/$role.yaml" ]; then
      echo "unknown role '$role': expected gateway, migrate or a service with config/$role.yaml" >&2
      exit 64
    fi
    upper=$(echo "$role" | tr '[:lower:]' '[:upper:]')
    # the service's web server (health endpoints, Consul's check) on $PORT
    eval "export ${upper}_WEB_ADDRESS=\"\${${upper}_WEB_ADDRESS:-0.0.0.0:${PORT:-8000}}\""
    exec nameko run --config "config/$role.yaml" "$role.service"
    ;;
esac

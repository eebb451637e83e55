#!/bin/sh
# PostgreSQL init script (docker-entrypoint-initdb.d): one schema per service, owned by the
# service's owner role (used only by the migration job), and a runtime role per service that
# gets its grants from `deploy/grants.py` after the migrations. Passwords come from the
# environment; nothing secret is written in this file.
set -eu
for svc in ${PLINTH_SERVICES:-identity auth authz audit}; do
  upper=$(echo "$svc" | tr '[:lower:]' '[:upper:]')
  owner_pw=$(eval echo "\${${upper}_OWNER_PASSWORD:?set ${upper}_OWNER_PASSWORD}")
  app_pw=$(eval echo "\${${upper}_APP_PASSWORD:?set ${upper}_APP_PASSWORD}")
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
       -v owner="${svc}_owner" -v app="${svc}_app" -v schema="$svc" \
       -v owner_pw="$owner_pw" -v app_pw="$app_pw" <<'SQL'
CREATE ROLE :"owner" LOGIN PASSWORD :'owner_pw';
CREATE ROLE :"app" LOGIN PASSWORD :'app_pw';
CREATE SCHEMA :"schema" AUTHORIZATION :"owner";
-- nobody else may use the schema: no cross-schema queries, ever
REVOKE ALL ON SCHEMA :"schema" FROM PUBLIC;
GRANT USAGE ON SCHEMA :"schema" TO :"app";
ALTER ROLE :"owner" SET search_path = :"schema";
ALTER ROLE :"app" SET search_path = :"schema";
SQL
done
# the public schema is not for the services
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -c "REVOKE CREATE ON SCHEMA public FROM PUBLIC"

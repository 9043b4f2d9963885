#!/bin/sh
# Starts PostgreSQL 15 in a pod: initdb on first start (into $PGDATA, a directory of its own on
# the claim), then the server on 0.0.0.0:$PGPORT in the foreground. Runs as any non-root uid
# (postgres refuses root); the database superuser is `postgres` whatever the uid's name.
# Authentication is `trust` from loopback and the pod network: in the mesh, who may connect is
# decided by mTLS and the AuthorizationPolicy beside this file. A production server keeps
# passwords (scram-sha-256) as well.
set -eu
bin="${PG_BIN:-/usr/lib/postgresql/15/bin}"
: "${PGDATA:?PGDATA must name the data directory}"
port="${PGPORT:-5432}"
network="${POD_NETWORK:-10.244.0.0/16}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  echo "start-postgres: initdb into $PGDATA (first start)"
  mkdir -p "$PGDATA"
  chmod 0700 "$PGDATA"
  "$bin/initdb" --pgdata="$PGDATA" --username=postgres --auth=trust --encoding=UTF8 --no-instructions >/dev/null
  cat > "$PGDATA/pg_hba.conf" <<HBA
# TYPE  DATABASE  USER  ADDRESS          METHOD
local   all       all                    trust
host    all       all   127.0.0.1/32     trust
host    all       all   ::1/128          trust
host    all       all   samenet          trust
host    all       all   $network         trust
HBA
fi
# postgres wants its directory 0700 (or 0750); an fsGroup walk of the volume may have added g+w.
chmod 0700 "$PGDATA"
echo "start-postgres: postgres on 0.0.0.0:$port"
# No Unix socket: the root file system is read-only and every client comes over TCP.
exec "$bin/postgres" -D "$PGDATA" -c listen_addresses='*' -c port="$port" \
  -c unix_socket_directories= -c max_connections=50 -c shared_buffers=16MB -c fsync=off

#!/bin/sh
# The pgbench Job: waits for the server, initializes pgbench's tables, runs 4 clients x 500
# transactions on 2 threads, prints pgbench's report, and exits 0 only when every transaction was
# processed and none failed.
set -u
bin="${PG_BIN:-/usr/lib/postgresql/15/bin}"
host="${PGHOST:-postgres.dbtest.svc.cluster.local}"
port="${PGPORT:-5432}"
clients="${PGBENCH_CLIENTS:-4}"
threads="${PGBENCH_THREADS:-2}"
transactions="${PGBENCH_TRANSACTIONS:-500}"
tries=0
until "$bin/pg_isready" -q -h "$host" -p "$port" -U postgres -d postgres -t 2; do
  tries=$((tries + 1))
  if [ "$tries" -ge 120 ]; then
    echo "pgbench: postgres at $host:$port did not answer within 120 tries" >&2
    exit 1
  fi
  sleep 1
done
"$bin/pgbench" -i -q -h "$host" -p "$port" -U postgres postgres || { echo "pgbench: pgbench -i failed" >&2; exit 1; }
out="$("$bin/pgbench" -h "$host" -p "$port" -U postgres -c "$clients" -j "$threads" -t "$transactions" postgres 2>&1)"
rc=$?
echo "$out"
expected=$((clients * transactions))
processed="$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\)\/.*/\1/p')"
failed="$(echo "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')"
tps="$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p')"
echo "pgbench: exit $rc, processed ${processed:-?}/$expected, failed ${failed:-?}, tps ${tps:-?}"
[ "$rc" = 0 ] && [ "${processed:-}" = "$expected" ] && [ "${failed:-}" = 0 ] || {
  echo "pgbench: FAILED (every transaction must be processed and none may fail)" >&2
  exit 1
}
echo "pgbench: OK"

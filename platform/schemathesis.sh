#!/usr/bin/env bash
# Feeds each platform service's OpenAPI description to schemathesis: the five service binaries
# are started on free loopback ports with a temporary data directory, wired to each other, each
# service is tested in turn, and all are stopped.
# Exits non-zero if any service has a failure (a 5xx, a crash, an undeclared status, a response
# that violates its schema, schema-violating input accepted).
#
# Usage: platform/schemathesis.sh [SERVICE...]   (default: all five)
# Env:   SCHEMATHESIS (default: .venv/bin/schemathesis at the repo root, else from PATH)
#        PLATFORM_BIN (default: build the debug binary under $CARGO_TARGET_DIR or target/)
#        MAX_EXAMPLES (default: 30)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
st="${SCHEMATHESIS:-}"
if [[ -z "$st" ]]; then
  if [[ -x "$root/.venv/bin/schemathesis" ]]; then st="$root/.venv/bin/schemathesis"; else st="schemathesis"; fi
fi
bin="${PLATFORM_BIN:-}"
if [[ -z "$bin" ]]; then
  (cd "$root" && cargo build -q -p onemesh-platform)
  bin="${CARGO_TARGET_DIR:-$root/target}/debug/onemesh-platform"
fi
max_examples="${MAX_EXAMPLES:-30}"
services=("$@")
if [[ ${#services[@]} -eq 0 ]]; then services=(order pg appcard card bank); fi

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# All five run together, wired to each other, so a call that crosses the chain gets a real
# answer (a 5xx from an unreachable upstream would rightly count as a failure).
declare -A port
for svc in order pg appcard card bank; do port[$svc]="$(free_port)"; done
for svc in order pg appcard card bank; do
  PG_URL="http://127.0.0.1:${port[pg]}" APPCARD_URL="http://127.0.0.1:${port[appcard]}" \
  CARD_URL="http://127.0.0.1:${port[card]}" BANK_URL="http://127.0.0.1:${port[bank]}" \
  RUST_LOG=warn env -u HTTP_PROXY -u http_proxy -u ALL_PROXY -u all_proxy \
    "$bin" "$svc" --listen "127.0.0.1:${port[$svc]}" --data-dir "$work/data" >"$work/$svc.log" 2>&1 &
  pids+=($!)
done
for svc in order pg appcard card bank; do
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:${port[$svc]}/healthz" >/dev/null 2>&1; then break; fi
    sleep 0.1
  done
done

failed=()
for svc in "${services[@]}"; do
  extra=()
  if [[ "$svc" == "pg" ]]; then extra=(-H "X-Merchant-Key: sk_test_tableshop"); fi
  echo "=== schemathesis: $svc on 127.0.0.1:${port[$svc]}"
  if ! "$st" --config-file "$here/schemathesis.toml" run "http://127.0.0.1:${port[$svc]}/openapi.json" \
      --max-examples "$max_examples" "${extra[@]}"; then
    failed+=("$svc")
  fi
done
i=0
for svc in order pg appcard card bank; do
  if ! kill -0 "${pids[$i]}" 2>/dev/null; then
    echo "!!! $svc exited during the run; its log:"; cat "$work/$svc.log"
    failed+=("$svc(crashed)")
  fi
  i=$((i + 1))
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "schemathesis failed for: ${failed[*]}"
  exit 1
fi
echo "schemathesis passed for: ${services[*]}"

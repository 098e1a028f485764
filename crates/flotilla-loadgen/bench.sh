#!/usr/bin/env bash
# One benchmark, one command: a fresh server (SQLite, in a temp dir, on a
# free port, polls of 1 s for agents that ask for none) and one loadgen
# scenario against it, with --server-pid; the summary goes to stdout.
#
#   crates/flotilla-loadgen/bench.sh <scenario> <agents> [loadgen options…]
#
# FLOTILLA_BIN picks the binary (default: target/release/flotilla);
# BENCH_SERVER_ENV adds settings to the server's environment, e.g.
# BENCH_SERVER_ENV="FLOTILLA_FLEET__EXPECTED_AGENTS=1000" (space-separated
# NAME=VALUE words).
set -euo pipefail
scenario=${1:?scenario}
agents=${2:?agents}
shift 2
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${FLOTILLA_BIN:-$root/target/release/flotilla}
dir=$(mktemp -d)
key=loadgen-bench-admin-key-0123456789abcdefghij
cleanup() {
  [[ -n "${pid:-}" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
server_env=()
for word in ${BENCH_SERVER_ENV:-}; do
  [[ "$word" == *=* ]] || { echo "BENCH_SERVER_ENV: '$word' is not NAME=VALUE" >&2; exit 2; }
  server_env+=("$word")
done
env -u RUST_LOG FLOTILLA_ADMIN_API_KEY=$key FLOTILLA_VERIFIER__EMBEDDED_AGENT=false \
  FLOTILLA_FLEET__POLL_TIMEOUT=1s FLOTILLA_FLEET__POLL_JITTER=0s RUST_LOG=warn \
  ${server_env[@]+"${server_env[@]}"} \
  "$bin" server --listen 127.0.0.1:0 --data-dir "$dir/data" >"$dir/out" 2>"$dir/err" &
pid=$!
for _ in $(seq 600); do
  grep -q '^listening on ' "$dir/out" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$dir/err" >&2; exit 1; }
  sleep 0.1
done
addr=$(sed -n 's/^listening on //p' "$dir/out")
FLOTILLA_API_KEY=$key "$bin" loadgen "$scenario" --url "http://$addr" --agents "$agents" \
  --server-pid "$pid" "$@"

#!/usr/bin/env bash
# One benchmark, one command: a fresh server (SQLite, in a temp dir, on a
# free port, polls of 1 s for agents that ask for none) and one loadgen
# scenario against it, with --server-pid; the summary goes to stdout.
#
#   crates/flotilla-loadgen/bench.sh <scenario> <agents> [loadgen options…]
#
# FLOTILLA_BIN picks the binary (default: target/release/flotilla).
# BENCH_ENGINE=postgres: a throwaway PostgreSQL (initdb in the temp dir, a
#   free port, synchronous_commit=off — like SQLite's WAL with
#   synchronous=NORMAL, a crash may lose the last commits, never corrupt).
# BENCH_INSTANCES=N (PostgreSQL only): N servers on that one database; loadgen
#   gets all their URLs and needs --processes N or more.
# BENCH_SERVER_ENV adds settings to the server(s)' environment, e.g.
#   BENCH_SERVER_ENV="FLOTILLA_FLEET__EXPECTED_AGENTS=1000" (space-separated
#   NAME=VALUE words).
set -euo pipefail
scenario=${1:?scenario}
agents=${2:?agents}
shift 2
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${FLOTILLA_BIN:-$root/target/release/flotilla}
engine=${BENCH_ENGINE:-sqlite}
instances=${BENCH_INSTANCES:-1}
dir=$(mktemp -d)
chmod 755 "$dir"
key=loadgen-bench-admin-key-0123456789abcdefghij
pids=()
pg=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ ${#pg[@]} -gt 0 ]]; then "${pg[@]}" pg_ctl -D "$dir/pg" -m immediate stop >/dev/null 2>&1 || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

db_env=()
if [[ $engine == postgres ]]; then
  pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [[ -x "$pgbin/initdb" ]] || { echo "bench.sh: PostgreSQL (initdb) is not installed" >&2; exit 1; }
  pg=(env "PATH=$pgbin:$PATH")
  if [[ $(id -u) == 0 ]]; then
    mkdir -p "$dir/pg" && chown postgres: "$dir/pg"
    pg=(runuser -u postgres -- env "PATH=$pgbin:$PATH")
  fi
  "${pg[@]}" initdb -D "$dir/pg" -A trust -U postgres -E UTF8 --no-sync >/dev/null
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "${pg[@]}" pg_ctl -D "$dir/pg" -l "$dir/pg/log" -w -t 60 \
    -o "-p $port -k $dir/pg -c listen_addresses=127.0.0.1 -c synchronous_commit=off -c max_connections=300" \
    start >/dev/null
  db_env=(FLOTILLA_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
    FLOTILLA_ENCRYPTION_KEY=loadgen-bench-encryption-key-0123456789abc)
elif [[ $instances != 1 ]]; then
  echo "bench.sh: BENCH_INSTANCES needs BENCH_ENGINE=postgres" >&2
  exit 1
fi

server_env=()
for word in ${BENCH_SERVER_ENV:-}; do
  [[ "$word" == *=* ]] || { echo "BENCH_SERVER_ENV: '$word' is not NAME=VALUE" >&2; exit 2; }
  server_env+=("$word")
done
urls=()
for i in $(seq "$instances"); do
  env -u RUST_LOG FLOTILLA_ADMIN_API_KEY=$key FLOTILLA_VERIFIER__EMBEDDED_AGENT=false \
    FLOTILLA_FLEET__POLL_TIMEOUT=1s FLOTILLA_FLEET__POLL_JITTER=0s RUST_LOG=warn \
    ${db_env[@]+"${db_env[@]}"} ${server_env[@]+"${server_env[@]}"} \
    "$bin" server --listen 127.0.0.1:0 --data-dir "$dir/data$i" >"$dir/out$i" 2>"$dir/err$i" &
  pids+=($!)
  for _ in $(seq 600); do
    grep -q '^listening on ' "$dir/out$i" 2>/dev/null && break
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$dir/err$i" >&2; exit 1; }
    sleep 0.1
  done
  urls+=("http://$(sed -n 's/^listening on //p' "$dir/out$i")")
done
FLOTILLA_API_KEY=$key "$bin" loadgen "$scenario" --url "$(IFS=,; echo "${urls[*]}")" \
  --agents "$agents" --server-pid "${pids[0]}" "$@"

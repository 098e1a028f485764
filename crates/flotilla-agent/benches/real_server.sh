#!/usr/bin/env bash
# File tailing against the real server: the release `flotilla` binary as
# server and as agent, a `log` integration on one file of N lines; prints
# events/s (until the server holds all N documents) and the agent process's
# CPU time per 1,000 events (from /proc/<pid>/stat).
#   cargo build --release -p flotilla && bash crates/flotilla-agent/benches/real_server.sh [N]
set -euo pipefail
N=${1:-200000}
BIN=${FLOTILLA_BIN:-target/release/flotilla}
KEY=bench-admin-key-0123456789abcdefghijklmnop
DIR=$(mktemp -d)
trap 'kill $SERVER $AGENT 2>/dev/null || true; rm -rf "$DIR"' EXIT
FLOTILLA_ADMIN_API_KEY=$KEY RUST_LOG=warn "$BIN" server --listen 127.0.0.1:0 --data-dir "$DIR/data" >"$DIR/server.out" 2>"$DIR/server.err" &
SERVER=$!
until grep -q '^listening on ' "$DIR/server.out" 2>/dev/null; do sleep 0.1; done
URL=http://$(sed -n 's/^listening on //p' "$DIR/server.out")
api() { curl -sf -H "authorization: ApiKey $KEY" -H 'content-type: application/json' "$@"; }
api -X POST "$URL/api/fleet/agent_policies" -d '{"id":"bench","name":"bench","namespace":"bench"}' >/dev/null
api -X POST "$URL/api/fleet/package_policies" -d "{\"name\":\"bench\",\"policy_id\":\"bench\",\"package\":{\"name\":\"log\"},\"vars\":{\"paths\":[\"$DIR/logs/*.log\"],\"data_stream.dataset\":\"bench\"}}" >/dev/null
TOKEN=$(api -X POST "$URL/api/fleet/enrollment_api_keys" -d '{"policy_id":"bench"}' | sed -n 's/.*"api_key":"\([^"]*\)".*/\1/p')
mkdir -p "$DIR/logs"
awk -v n="$N" 'BEGIN { for (i = 0; i < n; i++) printf "2026-12-02T12:00:00.000Z INFO request %d served in 12ms path=/api/v1/items status=200 bytes=5120\n", i }' >"$DIR/logs/app.log"
"$BIN" agent enroll --url "$URL" --enrollment-token "$TOKEN" --state-dir "$DIR/state" >/dev/null
START=$(date +%s.%N)
RUST_LOG=warn "$BIN" agent run --state-dir "$DIR/state" 2>"$DIR/agent.err" &
AGENT=$!
count() { api "$URL/api/fleet/data_streams/logs-bench-bench/_search?perPage=1" 2>/dev/null | sed -n 's/.*"total":\([0-9]*\).*/\1/p'; }
until [ "$(count || echo 0)" = "$N" ]; do sleep 0.05; done
END=$(date +%s.%N)
TICKS=$(awk '{print $14 + $15}' "/proc/$AGENT/stat")
HZ=$(getconf CLK_TCK)
awk -v n="$N" -v s="$START" -v e="$END" -v t="$TICKS" -v hz="$HZ" 'BEGIN {
  w = e - s; printf "logfile -> real flotilla server (SQLite): %d events in %.2fs (incl. agent start-up and first check-in): %.0f events/s, %.2f ms agent CPU per 1,000 events\n", n, w, n / w, t / hz * 1000 / (n / 1000) }'

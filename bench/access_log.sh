#!/usr/bin/env bash
# Connection rate with and without the access log (issue 17: logged >= 0.9x).
#
#   bash bench/access_log.sh [ROUNDS] [SECONDS] [CONCURRENCY]    (default 5 5 16)
#
# One proxy process, two identical listeners, one of them with access_log; the
# socksbench `cycles` client (connect, CONNECT, 1 byte echoed, close) runs
# against them alternately (A B A B ...) so machine noise hits both alike.
# Prints each RESULT line, then the ratio of the medians.
# Env: SOCKSBENCH=path (default bench/target/release/socksbench, built if missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS=${1:-5} DUR=${2:-5} CONC=${3:-16}
SB=${SOCKSBENCH:-bench/target/release/socksbench}
[ -x "$SB" ] || cargo build --release -q --manifest-path bench/Cargo.toml
[ -f build/lua5.4/kumoproxy.so ] || { echo "build/lua5.4/kumoproxy.so missing (bash .ci/setup)" >&2; exit 1; }
tmp=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$tmp"' EXIT
wait_ready() { for _ in $(seq 200); do grep -q '^READY' "$1" 2>/dev/null && return 0; sleep 0.05; done; return 1; }

"$SB" echo --listen 127.0.0.1:0 >"$tmp/echo.out" 2>/dev/null & pids+=($!)
wait_ready "$tmp/echo.out"
ECHO=$(sed -n 's/^READY \([^ ]*\).*/\1/p' "$tmp/echo.out")
KUMOPROXY_LOG=error LUA_CPATH='build/lua5.4/?.so;;' lua5.4 bench/access_log.lua "$tmp/access.jsonl" \
    >"$tmp/proxy.out" 2>"$tmp/proxy.log" & pids+=($!)
PROXY_PID=$!
wait_ready "$tmp/proxy.out"
PLAIN=$(sed -n 's/.*plain=\([^ ]*\).*/\1/p' "$tmp/proxy.out")
LOGGED=$(sed -n 's/.*logged=\([^ ]*\).*/\1/p' "$tmp/proxy.out")

run() {  # run LABEL PROXY -> connections per second
    "$SB" cycles --target "$ECHO" --proxy "$2" --concurrency "$CONC" --duration "$DUR" \
        --warmup 1 --quiet-wait 0 --label "$1" --proxy-pid "$PROXY_PID" | tee -a "$tmp/results" \
        | sed -n 's/.*"conn_s":\([0-9.]*\).*"proxy_cpu_us_per_conn":\([0-9.null]*\).*/\1 \2/p'
}
for _ in $(seq "$ROUNDS"); do
    run plain "$PLAIN" >>"$tmp/plain"
    run access_log "$LOGGED" >>"$tmp/logged"
done
cat "$tmp/results"
lines=$(wc -l <"$tmp/access.jsonl")
python3 - "$tmp/plain" "$tmp/logged" "$lines" <<'PY'
import statistics, sys
def load(f):
    rows = [x.split() for x in open(f) if x.strip()]
    rate = statistics.median(float(r[0]) for r in rows)
    cpu = [float(r[1]) for r in rows if r[1] != "null"]
    return rate, (statistics.median(cpu) if cpu else float("nan"))
(rp, cp), (rl, cl) = load(sys.argv[1]), load(sys.argv[2])
print("plain: median %.0f conn/s, %.1f us proxy CPU/conn; access_log: median %.0f conn/s, "
      "%.1f us/conn; rate ratio %.3f, CPU ratio %.3f (%s access log lines)"
      % (rp, cp, rl, cl, rl / rp, cl / cp, sys.argv[3]))
PY

#!/usr/bin/env bash
# Where one proxy's CPU per connection goes, user space and kernel, at c=16:
#
#   bash bench/profile/kernel.sh floor
#   bash bench/profile/kernel.sh fast-socks5             # bench/.peers/bin/server (bench/run.sh installs it)
#   bash bench/profile/kernel.sh kumoproxy SO [VAR=VALUE ...]   # e.g. KUMOPROXY_THREADS=1
#
# Starts the echo end and the proxy, runs `socksbench cycles --concurrency 16`
# for 1 s of warm-up and then 6 s while `perf record -e cpu-clock` samples the
# proxy's process for 5 s, and prints the proxy's CPU µs per cycle and its self
# time grouped by bench/profile/perfgroup.py (with µs per cycle per group).
# Issue 19's tables in docs/benchmarks.md come from this. Needs perf.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
what=$1; shift
SB=${SB:-bench/target/release/socksbench}
[ -x "$SB" ] || nice -n 10 cargo build --release -q --manifest-path bench/Cargo.toml
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
ready() {  # ready FILE: wait for its READY line, print the address
    for _ in $(seq 100); do
        grep -q '^READY' "$1" 2>/dev/null && break
        sleep 0.1
    done
    sed -n 's/^READY \(plain=\)\{0,1\}\([^ ]*\).*/\2/p' "$1" | head -1
}
"$SB" echo --listen 127.0.0.1:0 >"$tmp/echo.out" &
pids+=($!)
echo_addr=$(ready "$tmp/echo.out")
case $what in
    floor)
        "$SB" floor --listen 127.0.0.1:0 >"$tmp/p.out" &
        pid=$!; pids+=($pid); addr=$(ready "$tmp/p.out") ;;
    fast-socks5)
        port=$("$SB" free-port)
        bench/.peers/bin/server --listen-addr "127.0.0.1:$port" no-auth >"$tmp/p.out" 2>&1 &
        pid=$!; pids+=($pid); addr=127.0.0.1:$port
        for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done ;;
    kumoproxy)
        so=$1; shift
        mkdir "$tmp/mod" && cp "$so" "$tmp/mod/kumoproxy.so"
        env "$@" KUMOPROXY_LOG=warn LUA_CPATH="$tmp/mod/?.so;;" lua5.4 bench/profile/proxy.lua >"$tmp/p.out" 2>"$tmp/p.log" &
        pid=$!; pids+=($pid); addr=$(ready "$tmp/p.out") ;;
    *) echo "kernel.sh: floor, fast-socks5 or kumoproxy SO [VAR=VALUE ...]" >&2; exit 2 ;;
esac
"$SB" cycles --target "$echo_addr" --proxy "$addr" --concurrency 16 --duration 1 --warmup 0 --quiet-wait 0 >/dev/null
"$SB" cycles --target "$echo_addr" --proxy "$addr" --proxy-pid "$pid" --concurrency 16 --duration 6 \
    --warmup 0.5 --quiet-wait 0 --label "$what" >"$tmp/cycles.out" &
cyc=$!
sleep 0.5
perf record -q -e cpu-clock -F 2000 -p "$pid" -o "$tmp/perf.data" -- sleep 5 2>/dev/null
wait $cyc
us=$(sed -n 's/.*"proxy_cpu_us_per_conn":\([0-9.]*\).*/\1/p' "$tmp/cycles.out")
echo "$what $*: proxy CPU $us µs per cycle at c=16"
python3 bench/profile/perfgroup.py "$tmp/perf.data" --us-per-cycle "$us" ${PERFGROUP_OPTS:-}

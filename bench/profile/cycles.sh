#!/usr/bin/env bash
# Connection set-up cost of one kumoproxy build, per connection cycle, measured
# in ways that hold up on a loaded machine (docs/benchmarks.md, "Connection setup
# profile"):
#
#   bash bench/profile/cycles.sh callgrind SO N   # instructions per cycle (valgrind)
#   bash bench/profile/cycles.sh strace SO N      # syscalls per cycle (strace -c -f)
#   bash bench/profile/cycles.sh cpu SO N [C]     # proxy CPU µs per cycle (/proc)
#
# SO is a built kumoproxy.so (e.g. build/lua5.4/kumoproxy.so). The proxy runs
# bench/profile/proxy.lua with KUMOPROXY_THREADS=1; 200 warm-up cycles run first
# and are not counted; then N cycles of bench/profile/cycles.py (c=1 unless C).
# Output: one line "RESULT mode=... cycles=N per_cycle=..." plus the tool's report
# under $OUT (default /tmp/kp-profile).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
mode=$1 so=$2 n=$3 conc=${4:-1}
OUT=${OUT:-/tmp/kp-profile}
mkdir -p "$OUT"
SB=${SB:-bench/target/release/socksbench}
[ -x "$SB" ] || nice -n 10 cargo build --release -q --manifest-path bench/Cargo.toml
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
mkdir "$tmp/mod" && cp "$so" "$tmp/mod/kumoproxy.so"

"$SB" echo --listen 127.0.0.1:0 >"$tmp/echo.out" &
pids+=($!)
wrap=()
case $mode in
    callgrind) wrap=(valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" --dump-instr=no) ;;
    strace) wrap=(strace -c -f -o "$OUT/strace.txt") ;;
    cpu) ;;
    *) echo "mode: callgrind, strace or cpu" >&2; exit 2 ;;
esac
KUMOPROXY_THREADS=1 KUMOPROXY_LOG=warn LUA_CPATH="$tmp/mod/?.so;;" \
    "${wrap[@]}" lua5.4 bench/profile/proxy.lua >"$tmp/proxy.out" 2>"$tmp/proxy.log" &
ppid=$!
pids+=($ppid)
for _ in $(seq 600); do
    grep -q '^READY' "$tmp/proxy.out" 2>/dev/null && grep -q '^READY' "$tmp/echo.out" 2>/dev/null && break
    sleep 0.1
done
proxy=$(sed -n 's/^READY \([^ ]*\).*/\1/p' "$tmp/proxy.out")
echo=$(sed -n 's/^READY \([^ ]*\).*/\1/p' "$tmp/echo.out" | head -1)
# The process that does the work (valgrind/strace exec or fork lua5.4).
lpid=$(pgrep -n -P "$ppid" lua5.4 || echo "$ppid")
[ "$mode" = callgrind ] && lpid=$ppid

python3 bench/profile/cycles.py "$proxy" "$echo" 200 "$conc"   # warm-up
case $mode in
    callgrind) callgrind_control -z "$lpid" >/dev/null 2>&1 ;;
    strace) : ;;  # strace counts everything: warm-up is subtracted below
esac
cpu() { awk '{print $14 + $15}' "/proc/$lpid/stat"; }
ut() { awk '{print $14}' "/proc/$lpid/stat"; }
t0=$(cpu) u0=$(ut)
python3 bench/profile/cycles.py "$proxy" "$echo" "$n" "$conc"
t1=$(cpu) u1=$(ut)
case $mode in
    callgrind)
        callgrind_control -d "$lpid" >/dev/null 2>&1
        sleep 1
        f=$(ls -t "$OUT"/callgrind.out* | head -1)
        ir=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1; exit}')
        echo "RESULT mode=callgrind cycles=$n instructions=$ir per_cycle=$((ir / n)) file=$f"
        ;;
    cpu)
        hz=$(getconf CLK_TCK)
        echo "RESULT mode=cpu cycles=$n concurrency=$conc proxy_cpu_us_per_cycle=$(( (t1 - t0) * 1000000 / hz / n ))" \
            "user_us=$(( (u1 - u0) * 1000000 / hz / n )) system_us=$(( (t1 - t0 - u1 + u0) * 1000000 / hz / n ))"
        ;;
esac
# SIGTERM to the interpreter itself: run() returns, the process exits normally
# (callgrind then writes its profile; strace sees the exit and prints its table).
kill -TERM "$lpid"
wait "$ppid" 2>/dev/null || true
if [ "$mode" = strace ]; then
    echo "RESULT mode=strace cycles=$((n + 200)) (warm-up included) file=$OUT/strace.txt"
fi

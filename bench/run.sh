#!/usr/bin/env bash
# kumoproxy against peer SOCKS5 proxies on loopback, same client, same run.
#
#   bash bench/run.sh            # full run (~20-30 min), writes docs/benchmarks.md
#   bash bench/run.sh --smoke    # a few seconds of tiny counts; proves the tooling works
#
# Options: --reps N (default 3), --duration S (default 5), --out FILE (default
# docs/benchmarks.md), --results FILE (keep the raw RESULT lines), --no-peers,
# --sections LIST (comma list of bulk,cycles,auth,tls,idle,udp,limits; default all),
# --quiet-wait S (wait up to S seconds for a quiet machine before each measurement; 20).
# Env: KUMOPROXY_BEFORE=path/to/kumoproxy.so adds a "kumoproxy-before" target built
# from another tree, to show what a change bought within one run;
# KUMOPROXY_BEFORE_ENV="VAR=VALUE ..." runs that target (by default the current
# build) with extra environment, e.g. KUMOPROXY_THREADS=1.
#
# Builds the module (release, Lua 5.4) and bench/socksbench, installs microsocks and
# dante-server when missing, the fast-socks5 example server into bench/.peers, starts
# them all on 127.0.0.1, measures, renders the tables with bench/report.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

# The exact command, for the report.
CMD="bash bench/run.sh${*:+ $*}"
[ -n "${KUMOPROXY_BEFORE_ENV:-}" ] && CMD="KUMOPROXY_BEFORE_ENV='$KUMOPROXY_BEFORE_ENV' $CMD"
[ -n "${KUMOPROXY_BEFORE:-}" ] && CMD="KUMOPROXY_BEFORE=$KUMOPROXY_BEFORE $CMD"
SMOKE=0 REPS=3 DUR=5 WARM=1 QUIET=20 OUT=docs/benchmarks.md RESULTS="" PEERS=1
SECTIONS=bulk,cycles,auth,tls,idle,udp,limits
IDLE_COUNTS="1000 9900" STREAM_COUNTS="1 4" CONCS="1 16 64" UDP_IDLE=1000
while [ $# -gt 0 ]; do
    case $1 in
        --smoke) SMOKE=1 ;;
        --reps) REPS=$2; shift ;;
        --duration) DUR=$2; shift ;;
        --out) OUT=$2; shift ;;
        --results) RESULTS=$2; shift ;;
        --no-peers) PEERS=0 ;;
        --sections) SECTIONS=$2; shift ;;
        --quiet-wait) QUIET=$2; shift ;;
        *) echo "bench/run.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
if [ "$SMOKE" = 1 ]; then
    REPS=1 DUR=0.3 WARM=0.1 QUIET=0 IDLE_COUNTS="50" STREAM_COUNTS="2" CONCS="4" UDP_IDLE=20
fi
has() { [[ ",$SECTIONS," == *",$1,"* ]]; }
log() { echo "[bench $(date +%T)] $*" >&2; }

if ! command -v cargo >/dev/null && [ -f "$HOME/.cargo/env" ]; then
    . "$HOME/.cargo/env"
fi

# --- peers' packages ---------------------------------------------------------
if [ "$PEERS" = 1 ]; then
    missing=""
    command -v microsocks >/dev/null || missing="$missing microsocks"
    [ -x /usr/sbin/danted ] || missing="$missing dante-server"
    if [ -n "$missing" ]; then
        log "installing$missing"
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            $sudo apt-get install -y -qq --no-install-recommends $missing </dev/null; } \
            || log "apt-get install$missing failed; those peers are skipped"
    fi
    FS5=bench/.peers/bin/server
    if [ ! -x "$FS5" ] && [ "$SMOKE" = 0 ]; then
        log "cargo install fast-socks5 --example server (a few minutes, once)"
        nice -n 10 cargo install -q fast-socks5 --version 1.0.0 --example server --root bench/.peers \
            || log "fast-socks5 install failed; that peer is skipped"
    fi
fi

# --- builds ----------------------------------------------------------------------
log "building the module (release) and socksbench"
# CARGO_TARGET_DIR (e.g. a shared one) is honoured for the module; socksbench
# always builds into bench/target.
nice -n 10 cargo build --release -q
mkdir -p build/lua5.4
cp "${CARGO_TARGET_DIR:-target}/release/libkumoproxy.so" build/lua5.4/kumoproxy.so
nice -n 10 cargo build --release -q --manifest-path bench/Cargo.toml --target-dir bench/target
SB=$ROOT/bench/target/release/socksbench

# Idle relays need ~20k fds in the proxy: up to the hard limit (it cannot go higher).
ulimit -n "$(ulimit -Hn)"

tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
results=$tmp/results.jsonl
: >"$results"

# start_ready NAME CMD...: runs CMD in the background (pid in $STARTED), logs in
# $tmp/NAME.log, waits for its READY line. Not in $(...): the pid must stay our child.
STARTED=""
start_ready() {
    local name=$1; shift
    "$@" >"$tmp/$name.out" 2>"$tmp/$name.log" &
    local pid=$!
    pids+=("$pid")
    STARTED=$pid
    for _ in $(seq 200); do
        grep -q '^READY' "$tmp/$name.out" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    log "$name did not start: $(tail -3 "$tmp/$name.log")"
    return 1
}
# start_port NAME PORT CMD...: as above, but waits until PORT accepts connections.
start_port() {
    local name=$1 port=$2; shift 2
    "$@" >"$tmp/$name.out" 2>"$tmp/$name.log" &
    local pid=$!
    pids+=("$pid")
    STARTED=$pid
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    log "$name did not start: $(tail -3 "$tmp/$name.log")"
    return 1
}
ready_addr() { sed -n 's/^READY \([^ ]*\).*/\1/p' "$tmp/$1.out" | head -1; }

# --- ends ------------------------------------------------------------------------
start_ready sink "$SB" sink --listen 127.0.0.1:0
SINK_PID=$STARTED SINK=$(ready_addr sink)
start_ready echo "$SB" echo --listen 127.0.0.1:0
ECHO_PID=$STARTED ECHO=$(ready_addr echo)
start_ready sink_rw "$SB" sink --listen 127.0.0.1:0 --no-zerocopy
SINK_RW_PID=$STARTED SINK_RW=$(ready_addr sink_rw)
start_ready udp_echo "$SB" udp-echo --listen 127.0.0.1:0
UDP_ECHO_PID=$STARTED UDP_ECHO=$(ready_addr udp_echo)
AUX="$SINK_PID,$ECHO_PID,$SINK_RW_PID,$UDP_ECHO_PID"

# Fleet limits (issue 14) need a Redis: Debian's redis-server, persistence off.
REDIS_PORT=""
if has limits && command -v redis-server >/dev/null; then
    REDIS_PORT=$("$SB" free-port)
    start_port redis "$REDIS_PORT" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
        --save '' --appendonly no --dir "$tmp" || REDIS_PORT=""
fi

# --- proxies: name -> address, pid -------------------------------------------------
declare -A ADDR PID
targets=()
add() { ADDR[$1]=$2; PID[$1]=$3; targets+=("$1"); }

kp_start() {  # kp_start NAME MODULE_DIR [VAR=VALUE...]
    local name=$1 dir=$2 pid line
    shift 2
    KUMOPROXY_LOG=warn LUA_CPATH="$dir/?.so;;" \
        KUMOPROXY_BENCH_REDIS=${REDIS_PORT:+redis://127.0.0.1:$REDIS_PORT/0} start_ready "$name" \
        env "$@" lua5.4 bench/kumoproxy_bench.lua "$tmp/$name.pem" || return 1
    pid=$STARTED
    line=$(grep '^READY' "$tmp/$name.out")
    for kv in $line; do
        case $kv in
            plain=*) add "$name" "${kv#plain=}" "$pid" ;;
            auth=*) add "$name+auth" "${kv#auth=}" "$pid" ;;
            tls=*) add "$name-tls" "${kv#tls=}" "$pid" ;;
            copy=*) add "$name-copy" "${kv#copy=}" "$pid" ;;
            authcache=*) add "$name+authcache" "${kv#authcache=}" "$pid" ;;
            udp=*) add "$name+udp" "${kv#udp=}" "$pid" ;;
            pp=*) add "$name+pp" "${kv#pp=}" "$pid" ;;
            limits=*) add "$name+limits" "${kv#limits=}" "$pid" ;;
            fleet=*) add "$name+fleet" "${kv#fleet=}" "$pid" ;;
            bwfar=*) add "$name+bwfar" "${kv#bwfar=}" "$pid" ;;
            bw100m=*) add "$name+bw100m" "${kv#bw100m=}" "$pid" ;;
            bw1g=*) add "$name+bw1g" "${kv#bw1g=}" "$pid" ;;
        esac
    done
}
kp_start kumoproxy build/lua5.4
if [ -n "${KUMOPROXY_BEFORE:-}${KUMOPROXY_BEFORE_ENV:-}" ]; then
    mkdir -p "$tmp/before"
    cp "${KUMOPROXY_BEFORE:-build/lua5.4/kumoproxy.so}" "$tmp/before/kumoproxy.so"
    # shellcheck disable=SC2086
    kp_start kumoproxy-before "$tmp/before" ${KUMOPROXY_BEFORE_ENV:-} || log "KUMOPROXY_BEFORE did not start"
fi

# The yardstick for CPU per connection (issue 19): the least a SOCKS5 proxy can do
# per connection on this kernel (one thread, raw epoll; bench/src/floor.rs).
# Measured in the cycles section only.
start_ready floor "$SB" floor --listen 127.0.0.1:0 && add floor "$(ready_addr floor)" "$STARTED"

if [ "$PEERS" = 1 ]; then
    if command -v microsocks >/dev/null; then
        p=$("$SB" free-port)
        start_port microsocks "$p" microsocks -i 127.0.0.1 -p "$p" && add microsocks "127.0.0.1:$p" "$STARTED"
        p=$("$SB" free-port)
        start_port microsocks-auth "$p" microsocks -i 127.0.0.1 -p "$p" -u bench -P benchpass \
            && add microsocks+auth "127.0.0.1:$p" "$STARTED"
    fi
    if [ -x /usr/sbin/danted ]; then
        p=$("$SB" free-port)
        cat >"$tmp/danted.conf" <<EOF
logoutput: $tmp/danted.log
internal: 127.0.0.1 port = $p
external: 127.0.0.1
socksmethod: none
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }
socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 command: connect udpassociate }
socks pass { from: 0.0.0.0/0 to: 127.0.0.0/8 command: udpreply }
EOF
        start_port dante "$p" /usr/sbin/danted -N 1 -f "$tmp/danted.conf" -p "$tmp/danted.pid" \
            && add dante "127.0.0.1:$p" "$STARTED"
    fi
    if [ -x "${FS5:-}" ]; then
        p=$("$SB" free-port)
        start_port fast-socks5 "$p" "$FS5" --listen-addr "127.0.0.1:$p" no-auth \
            && add fast-socks5 "127.0.0.1:$p" "$STARTED"
        p=$("$SB" free-port)
        start_port fast-socks5-auth "$p" "$FS5" --listen-addr "127.0.0.1:$p" \
            password --username bench --password benchpass && add fast-socks5+auth "127.0.0.1:$p" "$STARTED"
    fi
fi
log "targets: ${targets[*]}"
is_target() { [[ " ${targets[*]} " == *" $1 "* ]]; }

# --- measurements ----------------------------------------------------------------------
failures=0
sb() {  # sb LABEL SUBCOMMAND ARGS...: one measurement, its RESULT line appended.
    local label=$1 sub=$2; shift 2
    local out
    if out=$("$SB" "$sub" --label "$label" --aux-pids "$AUX" --duration "$DUR" --warmup "$WARM" \
        --quiet-wait "$QUIET" "$@" 2>>"$tmp/socksbench.log"); then
        echo "$out" | grep '^RESULT ' | sed 's/^RESULT //' | tee -a "$results" | cut -c1-200 >&2
    else
        log "FAILED: $label $sub $*: $(tail -1 "$tmp/socksbench.log")"
        failures=$((failures + 1))
    fi
}
via() {  # proxy options for a target (none for direct)
    [ "$1" = direct ] && return 0
    echo "--proxy ${ADDR[$1]} --proxy-pid ${PID[$1]}"
}
auth_opts() { [[ $1 == *+auth* ]] && echo "--user bench --pass benchpass" || true; }
tls_opts() { [[ $1 == *-tls ]] && echo "--tls-ca $tmp/${1%-tls}.pem --tls-name localhost" || true; }

plain_targets=(direct)
for t in kumoproxy kumoproxy-before microsocks dante fast-socks5; do
    is_target "$t" && plain_targets+=("$t")
done
cycle_targets=("${plain_targets[@]}")
is_target floor && cycle_targets+=(floor)
auth_targets=()
for t in kumoproxy+auth kumoproxy+authcache kumoproxy-before+auth kumoproxy-before+authcache \
    microsocks+auth fast-socks5+auth; do
    is_target "$t" && auth_targets+=("$t")
done
# TLS and the userspace-copy reference: the current build only (keeps the run short).
tls_targets=()
is_target kumoproxy-tls && tls_targets+=(kumoproxy-tls)
udp_targets=()  # UDP ASSOCIATE: kumoproxy's udp listener and Dante (configured for UDP)
for t in kumoproxy+udp kumoproxy-before+udp dante; do
    is_target "$t" && udp_targets+=("$t")
done
copy_targets=()  # use_splice = false: the plain userspace relay, TLS's fair reference
is_target kumoproxy-copy && copy_targets+=(kumoproxy-copy)

for rep in $(seq "$REPS"); do
    log "=== repetition $rep of $REPS"
    if has bulk; then
        for t in "${plain_targets[@]}"; do
            for n in $STREAM_COUNTS; do
                for dir in up down; do
                    # shellcheck disable=SC2046
                    sb "$t" bulk --target "$SINK" --streams "$n" --dir "$dir" $(via "$t")
                done
            done
        done
        # The fair single-stream reference for a read/write relay: read/write ends.
        sb direct bulk --target "$SINK_RW" --streams 1 --dir up --no-zerocopy
    fi
    if has cycles; then
        for t in "${cycle_targets[@]}"; do
            # dante binds its outgoing sockets before connect, so with the client
            # closing first it runs out of ports (see shared/peer-baseline.md):
            # measure it, and everyone at c=64, with the server closing first too.
            for c in $CONCS; do
                if [ "$t" = dante ]; then
                    # shellcheck disable=SC2046
                    sb "$t" cycles --target "$ECHO" --concurrency "$c" --close-by server $(via "$t")
                else
                    # shellcheck disable=SC2046
                    sb "$t" cycles --target "$ECHO" --concurrency "$c" $(via "$t")
                fi
            done
            if [ "$t" != dante ]; then
                # shellcheck disable=SC2046
                sb "$t" cycles --target "$ECHO" --concurrency "${CONCS##* }" --close-by server $(via "$t")
            fi
        done
        # Behind a load balancer: a PROXY v2 header first on every connection
        # (issue 16: >= 0.95x the plain listener's conn/s at c=64).
        if is_target kumoproxy+pp; then
            for c in $CONCS; do
                # shellcheck disable=SC2046
                sb kumoproxy+pp cycles --target "$ECHO" --concurrency "$c" --proxy-v2 $(via kumoproxy+pp)
            done
        fi
    fi
    if has auth; then
        for t in "${auth_targets[@]}"; do
            for c in $CONCS; do
                # shellcheck disable=SC2046
                sb "$t" cycles --target "$ECHO" --concurrency "$c" $(via "$t") $(auth_opts "$t")
            done
        done
    fi
    if has tls; then
        for t in "${copy_targets[@]}"; do
            for n in $STREAM_COUNTS; do
                for dir in up down; do
                    # shellcheck disable=SC2046
                    sb "$t" bulk --target "$SINK" --streams "$n" --dir "$dir" $(via "$t")
                done
            done
        done
        for t in "${tls_targets[@]}"; do
            for n in $STREAM_COUNTS; do
                for dir in up down; do
                    # shellcheck disable=SC2046
                    sb "$t" bulk --target "$SINK" --streams "$n" --dir "$dir" $(via "$t") $(tls_opts "$t")
                done
            done
            for c in $CONCS; do
                # shellcheck disable=SC2046
                sb "$t" cycles --target "$ECHO" --concurrency "$c" $(via "$t") $(tls_opts "$t")
            done
            # shellcheck disable=SC2046
            sb "$t[full-handshake]" cycles --target "$ECHO" --concurrency "${CONCS##* }" --tls-no-resume \
                $(via "$t") $(tls_opts "$t")
        done
    fi
    if has udp; then
        # Issue 15: datagrams through a UDP ASSOCIATE relay, against Dante's.
        for t in direct "${udp_targets[@]}"; do
            for size in 64 1200; do
                for n in 1 8; do
                    # shellcheck disable=SC2046
                    sb "$t" udp --target "$UDP_ECHO" --size "$size" --associations "$n" $(via "$t")
                done
            done
        done
    fi
    if has limits; then
        # Issue 14: conn/s with local and fleet limits against none, interleaved;
        # the fleet runs also count Redis commands per session (INFO commandstats).
        for c in 16 64; do
            [ "$SMOKE" = 1 ] && c=4
            # Odd repetitions run the targets in reverse: a fixed order measured
            # the order (the first of a pair ran ~7% faster in bulk A/B runs).
            order="kumoproxy kumoproxy+limits kumoproxy+fleet"
            [ $((rep % 2)) = 1 ] && order="kumoproxy+fleet kumoproxy+limits kumoproxy"
            for t in $order; do
                is_target "$t" || continue
                redis_opt=""
                [ "$t" = kumoproxy+fleet ] && redis_opt="--redis-port $REDIS_PORT"
                # shellcheck disable=SC2046,SC2086
                sb "$t" cycles --target "$ECHO" --concurrency "$c" $(via "$t") $redis_opt
            done
            [ "$SMOKE" = 1 ] && break
        done
        # Bulk, 1 stream down: no limits, a bandwidth far above the link, and
        # two rates whose achieved / configured ratio is the shaping accuracy.
        order="kumoproxy kumoproxy+bwfar kumoproxy+bw1g kumoproxy+bw100m"
        [ $((rep % 2)) = 1 ] && order="kumoproxy+bw100m kumoproxy+bw1g kumoproxy+bwfar kumoproxy"
        for t in $order; do
            is_target "$t" || continue
            # shellcheck disable=SC2046
            sb "$t" bulk --target "$SINK" --streams 1 --dir down $(via "$t")
        done
    fi
done

if has udp; then
    for t in "${udp_targets[@]}"; do
        # shellcheck disable=SC2046
        sb "$t" udp-idle --target "$UDP_ECHO" --count "$UDP_IDLE" $(via "$t")
    done
fi

if has idle; then
    for t in "${plain_targets[@]}"; do
        [ "$t" = direct ] && continue
        for n in $IDLE_COUNTS; do
            # shellcheck disable=SC2046
            sb "$t" idle --target "$ECHO" --count "$n" --hold "$([ "$SMOKE" = 1 ] && echo 0.2 || echo 3)" $(via "$t")
        done
    done
fi

[ -n "$RESULTS" ] && cp "$results" "$RESULTS"

# --- report --------------------------------------------------------------------------
machine="nproc $(nproc), kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
cmd=$CMD
if [ "$SMOKE" = 1 ]; then
    # Smoke: every measurement produced a result with work done; no speed is asserted.
    python3 bench/report.py --check "$results" --machine "$machine" --command "$cmd" \
        --reps "$REPS" --duration "$DUR" >"$tmp/report.md" || failures=$((failures + 1))
else
    python3 bench/report.py "$results" --machine "$machine" --command "$cmd" \
        --reps "$REPS" --duration "$DUR" --date "$(date -u +%Y-%m-%d)" \
        --load "$(cut -d' ' -f1-3 /proc/loadavg)" --template "$OUT" >"$tmp/report.md"
    cp "$tmp/report.md" "$OUT"
    log "wrote $OUT"
fi
if [ "$failures" -gt 0 ]; then
    log "$failures measurement(s) failed; see above"
    exit 1
fi
log "done"

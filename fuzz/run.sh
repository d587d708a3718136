#!/usr/bin/env bash
# Build and run kumoproxy's fuzz targets (libFuzzer via libfuzzer-sys).
#
#   bash fuzz/run.sh [SECONDS]       each target for SECONDS (default 60)
#   bash fuzz/run.sh --runs N        each target for N executions (CI: .ci/run)
#   bash fuzz/run.sh ... TARGET...   only these targets
#
# Targets: greeting, userpass, request, reply (the socks5.rs codecs), http_head
# (http_connect.rs: request head, CONNECT target, Basic credentials), session
# (a whole server session over an in-memory stream), udp_header
# (proto/socks5_udp.rs: the UDP ASSOCIATE datagram header), proxy_header
# (proto/proxy_header.rs: PROXY protocol v1/v2 parse and builders),
# proxy_session (a whole session behind proxy_protocol, over loopback TCP) and
# client_text (the log escaping of client bytes, proto/text.rs). Inputs
# start from the committed corpus fuzz/corpus/TARGET; new inputs go to fuzz/work/TARGET and
# crashes to fuzz/artifacts/TARGET/ (both ignored by git).
#
# Stable Rust only: this passes rustc the flags `cargo fuzz build -s none`
# passes (sanitizer-coverage instrumentation, --cfg fuzzing) and needs neither
# cargo-fuzz nor nightly. With cargo-fuzz installed the same targets also run
# as `cd fuzz && cargo fuzz run TARGET -s none`.
#
# Prints one line per target ("fuzz TARGET: ok, N executions" or "FAILED"),
# then "N passed, N failed" (targets). Exit status non-zero if any failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if ! command -v cargo >/dev/null && [ -f "$HOME/.cargo/env" ]; then
    . "$HOME/.cargo/env"
fi

mode=(-max_total_time=60)
profile=release
if [ "${1:-}" = "--runs" ]; then
    mode=(-runs="$2")
    profile=ci   # a quicker build for a bounded run (see fuzz/Cargo.toml)
    shift 2
elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then
    mode=(-max_total_time="$1")
    shift
fi
all_targets="greeting userpass request reply http_head session udp_header proxy_header proxy_session client_text"
targets=${*:-$all_targets}

triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 -Cllvm-args=-sanitizer-coverage-stack-depth \
-Cdebug-assertions -Coverflow-checks"
# Only the runtime of the fuzzed crate is instrumented code we care about; the
# target dir is separate from the module's so the two builds never invalidate each other.
if ! cargo build --profile "$profile" --bins --target "$triple" --target-dir target 2>build.log; then
    tail -40 build.log
    echo "!!! fuzz build failed (full log: fuzz/build.log)"
    echo "0 passed, 1 failed"
    exit 1
fi

passed=0 failed=0
for t in $targets; do
    mkdir -p "work/$t" "artifacts/$t"
    log="artifacts/$t/last-run.log"
    if "target/$triple/$profile/$t" "${mode[@]}" -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" -timeout=10 -rss_limit_mb=1024 \
        "work/$t" "corpus/$t" >"$log" 2>&1; then
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        echo "fuzz $t: ok, ${execs:-?} executions"
        passed=$((passed + 1))
    else
        echo "fuzz $t: FAILED (log: fuzz/$log)"
        grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" | head -10 || true
        failed=$((failed + 1))
    fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# Run the busted specs under Lua 5.4 and LuaJIT against the built modules.
#
#   bash spec/run.sh [busted args / spec files...]     (default: spec/)
#
# Expects build/lua5.4/kumoproxy.so and build/luajit/kumoproxy.so (bash .ci/run
# builds them). Environment:
#   KUMOPROXY_INTERPRETERS  which to run, default "lua5.4 luajit"
#   KUMOPROXY_SPEC_TIMEOUT  seconds per interpreter run, default 900
#   KUMOPROXY_SUMMARY_FILE  if set, one "passed failed" line per interpreter
#                           is appended to it (.ci/run adds them up)
# Last line of output: "N passed, N failed" over all interpreters. A run that
# crashes before reporting, times out, lacks its module, or runs no tests at
# all counts as 1 failed. Exit status is non-zero unless all passed and N>0.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

interpreters=${KUMOPROXY_INTERPRETERS:-lua5.4 luajit}
spec_timeout=${KUMOPROXY_SPEC_TIMEOUT:-900}
busted_bin=$(command -v busted || true)
[ $# -gt 0 ] || set -- spec
# Session failures are logged at warn; specs provoke many on purpose.
export KUMOPROXY_LOG=${KUMOPROXY_LOG:-error}


tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

total_passed=0
total_failed=0

for interp in $interpreters; do
    case "$interp" in
        lua5.4) moddir=build/lua5.4 ;;
        luajit) moddir=build/luajit ;;
        *) moddir=build/$interp ;;
    esac
    echo "=== busted under $interp ($moddir/kumoproxy.so)"
    summary="$tmp/$interp.summary"
    : >"$summary"
    passed=0 failed=0 rc=0
    if ! command -v "$interp" >/dev/null || [ -z "$busted_bin" ]; then
        echo "!!! $interp or busted not installed"
        failed=1
    elif [ ! -f "$moddir/kumoproxy.so" ]; then
        echo "!!! $moddir/kumoproxy.so missing (build it first, e.g. bash .ci/run)"
        failed=1
    else
        LUA_PATH="lua/?.lua;lua/?/init.lua;;" \
        LUA_CPATH="$moddir/?.so;;" \
        KUMOPROXY_SUMMARY_FILE="$summary" \
            timeout -k 10 "$spec_timeout" \
            "$interp" "$busted_bin" -o spec/support/summary_handler.lua "$@" \
            </dev/null || rc=$?
        if read -r passed failed <"$summary" 2>/dev/null && [ -n "$failed" ]; then
            if [ "$passed" -eq 0 ] && [ "$failed" -eq 0 ]; then
                echo "!!! no tests ran under $interp"
                failed=1
            elif [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
                echo "!!! busted under $interp exited with status $rc after reporting success"
                failed=1
            fi
        else
            case "$rc" in
                124|137) echo "!!! busted under $interp timed out after ${spec_timeout}s" ;;
                *) echo "!!! busted under $interp exited ($rc) without a summary (crash?)" ;;
            esac
            passed=0 failed=1
        fi
    fi
    echo "=== $interp: $passed passed, $failed failed"
    if [ -n "${KUMOPROXY_SUMMARY_FILE:-}" ]; then
        echo "$passed $failed" >>"$KUMOPROXY_SUMMARY_FILE"
    fi
    total_passed=$((total_passed + passed))
    total_failed=$((total_failed + failed))
done

echo "$total_passed passed, $total_failed failed"
[ "$total_failed" -eq 0 ] && [ "$total_passed" -gt 0 ]

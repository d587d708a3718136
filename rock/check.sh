#!/usr/bin/env bash
# Packaging checks, as a new user meets them (a .ci/run stage):
#
#   bash rock/check.sh
#
# For each interpreter in KUMOPROXY_ROCK_INTERPRETERS (default "lua5.4 luajit"):
#   source rock  bash rock/pack-src.sh, then `luarocks install` of it into a fresh
#                tree; in that tree: the module and kumoproxy.openresty load, the
#                library is stripped and small, README + docs/ + examples are
#                installed with every README link to docs/ resolving, the
#                `kumoproxy` command runs with the right interpreter and relays
#                curl's request to a local origin, then exits 0 on SIGTERM
#   binary rock  `luarocks make --pack-binary-rock` in the checkout, then
#                `luarocks install` of the .rock into another fresh tree; the
#                module loads there
# and once: `systemd-analyze verify examples/kumoproxy.service` (ExecStart pointed
# at the installed command), with no warning allowed.
#
# Cargo builds share CARGO_TARGET_DIR (default: target/ for Lua 5.4 and
# target/luajit for LuaJIT, as .ci/setup), so only kumoproxy itself compiles.
# Last line: "N passed, N failed"; exit status non-zero unless all passed.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
export KUMOPROXY_LOG=${KUMOPROXY_LOG:-warn}
max_lib_bytes=$((16 * 1024 * 1024))

tmp=$(mktemp -d)
cleanup() {
    [ -n "${origin_pid:-}" ] && kill "$origin_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

passed=0 failed=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
nok() { echo "FAIL $*"; failed=$((failed + 1)); }
# check NAME COMMAND...: one test; the command's output is shown on failure.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then ok "$name"; else nok "$name"; echo "$out" | tail -30 | sed 's/^/     | /'; fi
}

# A local origin for the curl checks (spec/support/origin.py, stdlib only).
coproc ORIGIN { exec python3 spec/support/origin.py --max-seconds 900; }
origin_pid=$ORIGIN_PID
read -r ready <&"${ORIGIN[0]}"
origin_http=$(sed -n 's/.* http=\([0-9]*\).*/\1/p' <<<"$ready")

bash rock/pack-src.sh "$tmp" >/dev/null || { nok "rock/pack-src.sh"; }
src_rock=$(ls "$tmp"/kumoproxy-*.src.rock 2>/dev/null | head -1)
[ -n "$src_rock" ] && ok "rock/pack-src.sh made $(basename "$src_rock")"

# luarocks flags per interpreter. LuaJIT: luarocks finds it as the Lua 5.1 of a
# directory holding bin/luajit and include/ (README, docs/install.md).
mkdir -p "$tmp/luajit-dir/bin"
ln -s "$(command -v luajit)" "$tmp/luajit-dir/bin/luajit"
ln -s /usr/include/luajit-2.1 "$tmp/luajit-dir/include"
rocks_flags() {
    case $1 in
        lua5.4) echo "--lua-version 5.4" ;;
        lua5.3) echo "--lua-version 5.3" ;;
        lua5.2) echo "--lua-version 5.2" ;;
        lua5.1) echo "--lua-version 5.1" ;;
        luajit) echo "--lua-version 5.1 --lua-dir $tmp/luajit-dir" ;;
    esac
}
target_for() {
    case $1 in
        lua5.4) echo "${CARGO_TARGET_DIR:-$repo/target}" ;;
        *) echo "${CARGO_TARGET_DIR:-$repo/target/$1}" ;;
    esac
}

# The rock tree's files, checked after an install.
check_tree() {  # check_tree INTERP TREE
    local interp=$1 tree=$2 rockdir lib
    rockdir=$(ls -d "$tree"/lib/luarocks/rocks-*/kumoproxy/scm-1 2>/dev/null | head -1)
    lib=$(ls "$tree"/lib/lua/*/kumoproxy.so 2>/dev/null | head -1)
    check "$interp: the tree's module and kumoproxy.openresty load" \
        "$interp" -e "package.path='$tree/share/lua/'..(_VERSION:match('%d%.%d'))..'/?.lua;'..package.path
                      package.cpath='$(dirname "${lib:-/nonexistent/x}")/?.so;'..package.cpath
                      local k = require 'kumoproxy'; assert(k.VERSION:match('^%d'))
                      assert(package.searchpath('kumoproxy.openresty', package.path), 'no kumoproxy.openresty')"
    check "$interp: installed library is stripped and under $max_lib_bytes bytes ($(stat -c %s "$lib" 2>/dev/null) bytes)" \
        bash -c '[ -f "$1" ] && [ "$(stat -c %s "$1")" -lt "$2" ] && file "$1" | grep -q ", stripped"' _ "$lib" "$max_lib_bytes"
    check "$interp: README, CHANGELOG, docs/ and examples/ installed; README's docs/ links resolve" \
        bash -c '
            d=$1/doc
            [ -f "$d/README.md" ] && [ -f "$d/CHANGELOG.md" ] && [ -f "$d/docs/README.md" ] \
                && [ -f "$d/examples/init.lua" ] && [ -f "$d/examples/kumoproxy.service" ] || exit 1
            n=0
            for link in $(grep -o "](docs/[^)#]*" "$d/README.md" | cut -c3-); do
                [ -e "$d/$link" ] || { echo "broken: $link"; exit 1; }
                n=$((n + 1))
            done
            [ "$n" -gt 0 ]' _ "$rockdir"
    check "$interp: the installed kumoproxy command runs under $interp" \
        bash -c '"$1/bin/kumoproxy" --version | grep -q "^kumoproxy [0-9]" && grep -q "$2" "$1/bin/kumoproxy"' \
        _ "$tree" "$(if [ "$interp" = luajit ]; then echo luajit; else echo "$interp"; fi)"
    check "$interp: curl through the installed command; SIGTERM exits 0; a bad flag exits 2" \
        bash -c '
            tree=$1 origin=$2
            "$tree/bin/kumoproxy" --bogus 2>/dev/null; [ $? -eq 2 ] || { echo "bad flag did not exit 2"; exit 1; }
            coproc P { KUMOPROXY_LOG=info exec "$tree/bin/kumoproxy" --listen 127.0.0.1:0 --allow-private-destinations 2>&1; }
            pid=$P_PID
            exec 3<&"${P[0]}"
            port=
            while read -r line <&3; do
                echo "$line"
                case $line in "kumoproxy: listening on "*) port=${line##*:} ;; esac
                case $line in *"kumoproxy.run: serving"*) break ;; esac
            done
            body=$(curl -sS -m 10 --socks5-hostname "127.0.0.1:$port" "http://127.0.0.1:$origin/")
            kill -TERM "$pid"
            cat <&3 >/dev/null
            wait "$pid"; rc=$?
            echo "body=$body rc=$rc"
            [ "$body" = "hello from origin" ] && [ "$rc" -eq 0 ]' _ "$tree" "$origin_http"
}

for interp in ${KUMOPROXY_ROCK_INTERPRETERS:-lua5.4 luajit}; do
    echo "=== $interp"
    flags=$(rocks_flags "$interp")
    export CARGO_TARGET_DIR
    CARGO_TARGET_DIR=$(target_for "$interp")

    # 1. source rock
    tree=$tmp/src-$interp
    # shellcheck disable=SC2086
    if [ -n "$src_rock" ] && (cd "$tmp" && luarocks $flags --tree "$tree" install "$src_rock") >"$tmp/install-src-$interp.log" 2>&1; then
        ok "$interp: luarocks install $(basename "$src_rock")"
        check_tree "$interp" "$tree"
    else
        nok "$interp: luarocks install of the source rock"
        tail -30 "$tmp/install-src-$interp.log" | sed 's/^/     | /'
    fi

    # 2. binary rock, made from the checkout
    out=$tmp/bin-$interp
    mkdir -p "$out"
    # shellcheck disable=SC2086
    if (luarocks $flags make --pack-binary-rock kumoproxy-scm-1.rockspec && mv kumoproxy-scm-1.*.rock "$out/") \
        >"$tmp/make-$interp.log" 2>&1 \
        && rock=$(ls "$out"/kumoproxy-scm-1.*.rock) \
        && (cd "$tmp" && luarocks $flags --tree "$out/tree" install "$rock") >>"$tmp/make-$interp.log" 2>&1; then
        ok "$interp: luarocks make --pack-binary-rock, then luarocks install $(basename "$rock")"
        check "$interp: the binary rock's module loads" \
            "$interp" -e "package.cpath='$(ls -d "$out"/tree/lib/lua/*)/?.so;'..package.cpath; assert(require('kumoproxy').VERSION)"
    else
        nok "$interp: binary rock"
        tail -30 "$tmp/make-$interp.log" | sed 's/^/     | /'
    fi
done

# 3. the systemd unit, against the command a rock installed
echo "=== examples/kumoproxy.service"
cmd=$(ls "$tmp"/src-*/bin/kumoproxy 2>/dev/null | head -1)
if ! command -v systemd-analyze >/dev/null; then
    nok "systemd-analyze verify: systemd-analyze not installed (bash .ci/setup installs systemd)"
elif [ -z "$cmd" ]; then
    nok "systemd-analyze verify: no installed kumoproxy command to point ExecStart at"
else
    sed "s|/usr/local/bin/kumoproxy|$cmd|g" examples/kumoproxy.service >"$tmp/kumoproxy.service"
    check "systemd-analyze verify examples/kumoproxy.service (no warnings)" \
        bash -c 'out=$(systemd-analyze verify "$1" 2>&1); rc=$?; echo "$out"; [ $rc -eq 0 ] && [ -z "$out" ]' _ "$tmp/kumoproxy.service"
    check "the unit reloads with SIGHUP and runs the kumoproxy command" \
        bash -c 'grep -qx "ExecReload=/bin/kill -HUP \$MAINPID" "$1" && grep -q "^ExecStart=/usr/local/bin/kumoproxy " "$1"' _ examples/kumoproxy.service
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]

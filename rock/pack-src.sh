#!/usr/bin/env bash
# Makes the source rock from this checkout, with no network:
#
#   bash rock/pack-src.sh [OUTDIR]      -> OUTDIR/kumoproxy-scm-1.src.rock (default .)
#
# A source rock is a zip of the rockspec and the source tree in the directory
# the rockspec's source.url names (kumoproxy/), which is what `luarocks pack`
# would produce after fetching source.url. The tree is the checkout's files as
# they are now, committed or not, minus what .gitignore excludes (build output).
# Install it with e.g. `luarocks --lua-version 5.4 install kumoproxy-scm-1.src.rock`.
set -euo pipefail

out=$(cd "${1:-.}" && pwd)
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rockspec=$(ls kumoproxy-*.rockspec)
[ "$(echo "$rockspec" | wc -l)" -eq 1 ] || { echo "pack-src: expected one rockspec, found: $rockspec" >&2; exit 1; }
name=${rockspec%.rockspec}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/kumoproxy"
# A throwaway index: the checkout's own index and files are left alone.
tree=$(GIT_INDEX_FILE="$tmp/index" bash -c 'git add -A && git write-tree')
git archive --format=tar "$tree" | tar -x -C "$tmp/kumoproxy"
cp "$rockspec" "$tmp/"
rm -f "$out/$name.src.rock"
(cd "$tmp" && zip -qr "$out/$name.src.rock" "$rockspec" kumoproxy)
echo "$out/$name.src.rock"

rockspec_format = "3.0"
package = "kumoproxy"
version = "scm-1"

-- There is no public repository to fetch from yet, so rocks are made from a
-- checkout (docs/install.md):
--   source rock: bash rock/pack-src.sh
--                -> kumoproxy-scm-1.src.rock (this file + the tree in kumoproxy/,
--                   the directory this URL's basename names)
--   binary rock: luarocks --lua-version 5.4 make --pack-binary-rock kumoproxy-scm-1.rockspec
-- `luarocks install` of either needs no network beyond cargo's crate registry.
source = {
   url = "git+https://example.invalid/kumoproxy.git",
}

description = {
   summary = "SOCKS5 and HTTP CONNECT proxy whose policy is Lua (Rust, mlua)",
   detailed = [[
kumoproxy is a Lua module written in Rust (mlua): require "kumoproxy" runs a
SOCKS5 (and HTTP CONNECT) proxy on its own tokio runtime, wire-compatible with
KumoMTA's KumoProxy, whose authentication and destination policy are Lua
functions. The rock also installs the `kumoproxy` command (KumoProxy's legacy
flags, or a Lua policy file) and the docs and examples. Building needs a Rust
toolchain (cargo).
]],
   license = "Apache-2.0",
   labels = { "proxy", "socks5", "network", "rust" },
}

-- Every version in this range is built and tested by .ci/run: Lua 5.4 and
-- LuaJIT with every spec, Lua 5.1, 5.2 and 5.3 with the core and CLI specs.
dependencies = {
   "lua >= 5.1, < 5.5",
}

build = {
   -- The conventions of luarocks-build-rust-mlua (the `rust-mlua` build type
   -- mlua-based rocks use), written out as a `command` build because that
   -- backend is itself a rock fetched from the network:
   -- * one cargo feature per interpreter (lua54, lua53, lua52, lua51, luajit)
   --   with --no-default-features; the interpreter is asked directly ($(LUA),
   --   LuaJIT defines `jit`), the path is the fallback;
   -- * target/release/libkumoproxy.so is installed as kumoproxy.so in the
   --   tree's lib dir.
   -- Deviations: CARGO_TARGET_DIR is honoured (rust-mlua always uses
   -- ./target); --locked builds exactly the checked-in Cargo.lock; the library
   -- is staged as target/luarocks/kumoproxy.so because build.install.lib keeps
   -- the file name; docs/, examples/, README.md and CHANGELOG.md are staged in
   -- doc/ (luarocks' default doc directory, `luarocks doc kumoproxy`) so the
   -- README's links to docs/ resolve where it is installed.
   -- NB: use backticks, not $(...) -- luarocks substitutes $(WORD).
   type = "command",
   build_command = [[
set -e
lua_bin="$(LUA)"
lua_inc="$(LUA_INCDIR)"
kind=`"$lua_bin" -e 'io.write(jit and "luajit" or _VERSION)' 2>/dev/null || true`
case "$kind" in
   luajit) feature=luajit ;;
   "Lua 5.4") feature=lua54 ;;
   "Lua 5.3") feature=lua53 ;;
   "Lua 5.2") feature=lua52 ;;
   "Lua 5.1") feature=lua51 ;;
   "") case "$lua_bin $lua_inc" in
          *luajit*) feature=luajit ;;
          *5.1*|*51*) feature=lua51 ;;
          *5.2*|*52*) feature=lua52 ;;
          *5.3*|*53*) feature=lua53 ;;
          *) feature=lua54 ;;
       esac ;;
   *) echo "kumoproxy: unsupported interpreter: $kind" >&2; exit 1 ;;
esac
target_dir="${CARGO_TARGET_DIR:-target}"
echo "kumoproxy: interpreter ${kind:-unknown} ($lua_bin), cargo feature $feature, target dir $target_dir"
cargo build --release --locked --no-default-features --features "$feature" --target-dir "$target_dir"
mkdir -p target/luarocks
cp "$target_dir/release/libkumoproxy.so" target/luarocks/kumoproxy.so
rm -rf doc
mkdir doc
cp -R README.md CHANGELOG.md docs examples doc/
]],
   install = {
      lib = {
         kumoproxy = "target/luarocks/kumoproxy.so",
      },
      lua = {
         ["kumoproxy.openresty"] = "lua/kumoproxy/openresty.lua",
      },
      -- luarocks installs a wrapper in the tree's bin/ that runs this script
      -- with the interpreter the rock was built for, with the tree's paths set.
      bin = {
         kumoproxy = "bin/kumoproxy",
      },
   },
}

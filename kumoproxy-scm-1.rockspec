rockspec_format = "3.0"
package = "kumoproxy"
version = "scm-1"

source = {
   url = "git+https://example.invalid/kumoproxy.git",
}

description = {
   summary = "SOCKS5 proxy server as a Lua module (Rust, mlua)",
   detailed = [[
kumoproxy is a Rust cdylib Lua module (built with mlua) providing a SOCKS5
proxy compatible with KumoMTA's proxy protocol. Works with Lua 5.4, Lua 5.1
and LuaJIT; building requires a Rust toolchain (cargo).
]],
   license = "Apache-2.0",
}

dependencies = {
   "lua >= 5.1, < 5.5",
}

build = {
   type = "command",
   -- The target interpreter is detected by running $(LUA) (LuaJIT defines
   -- the global `jit`); if that is not possible, fall back to looking for
   -- "luajit" / "5.1" in the interpreter path and LUA_INCDIR. The library is
   -- copied to target/luarocks/kumoproxy.so because build.install.lib keeps
   -- the source file name.
   -- NB: use backticks, not $(...) -- luarocks substitutes $(WORD).
   build_command = [[
set -e
lua_bin="$(LUA)"
lua_inc="$(LUA_INCDIR)"
kind=`"$lua_bin" -e 'io.write(jit and "luajit" or _VERSION)' 2>/dev/null || true`
case "$kind" in
   luajit) features="--no-default-features --features luajit" ;;
   "Lua 5.4") features="" ;;
   "Lua 5.1") features="--no-default-features --features lua51" ;;
   "") case "$lua_bin $lua_inc" in
          *luajit*) features="--no-default-features --features luajit" ;;
          *5.1*|*51*) features="--no-default-features --features lua51" ;;
          *) features="" ;;
       esac ;;
   *) echo "kumoproxy: unsupported interpreter: $kind" >&2; exit 1 ;;
esac
echo "kumoproxy: interpreter=${kind:-unknown} ($lua_bin) cargo features: ${features:-default (lua54)}"
cargo build --release --target-dir target $features
mkdir -p target/luarocks
cp target/release/libkumoproxy.so target/luarocks/kumoproxy.so
]],
   install = {
      lib = {
         kumoproxy = "target/luarocks/kumoproxy.so",
      },
      lua = {
         ["kumoproxy.openresty"] = "lua/kumoproxy/openresty.lua",
      },
   },
}

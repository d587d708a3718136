fn main() {
    // Runtime threads keep executing this library's code until the process exits.
    // Lua's `lua_close` dlclose()s C modules; -z nodelete keeps the code mapped.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    }
}

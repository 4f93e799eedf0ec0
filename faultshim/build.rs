//! Build script: mark the shim `-z nodelete` so that a `dlclose` by the host (cryptoki drops its
//! `libloading::Library` when the last `Pkcs11` clone goes away) never unmaps code that the
//! shim's background thread, or the real module it wrapped, may still be running.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" || os == "freebsd" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    }
}

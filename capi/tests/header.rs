//! `include/kstackmap.h` is what cbindgen generates from `src/` now.
//!
//! Fails when the checked-in header is stale; `KSM_BLESS=1` rewrites it.

use std::path::Path;

#[test]
fn header_is_fresh() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen failed on src/");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let fresh = String::from_utf8(fresh).expect("cbindgen wrote UTF-8");
    let path = dir.join("include/kstackmap.h");
    if std::env::var_os("KSM_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write include/kstackmap.h");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "capi/include/kstackmap.h is stale: run `KSM_BLESS=1 cargo test -p kstackmap-capi --test header` and commit it"
    );
}

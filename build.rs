//! Sets `cfg(kstackmap_llsc)` on the targets whose freelist pop uses
//! load-exclusive / store-exclusive (`src/freelist.rs`, "ABA: the exact
//! bound"): ARMv7-M, ARMv7E-M and ARMv8-M Mainline. Stable Rust exposes no
//! `target_feature` that tells them apart from ARMv6-M or ARMv8-M Baseline
//! (whose Thumb-1 subset lacks the instructions the pop uses), so the
//! target name decides.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    let llsc = ["thumbv7m-", "thumbv7em-", "thumbv8m.main-"];
    if llsc.iter().any(|prefix| target.starts_with(prefix)) {
        println!("cargo:rustc-cfg=kstackmap_llsc");
    }
}

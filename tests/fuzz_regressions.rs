//! Regression tests from the fuzz targets (`fuzz/`): every crash a target
//! found, minimized and spelled out, replayed through the same check the
//! target runs (the check modules are included from `fuzz/src/` by path).
//! The seeds in `fuzz/corpus/*/seed-*` are replayed too, so the checks
//! themselves run in the ordinary test suite.

#[path = "../fuzz/src/ops.rs"]
#[allow(dead_code)]
mod ops;

use arbitrary::{Arbitrary, Unstructured};
use std::path::Path;

/// Every `seed-*` file of a target's corpus.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("seed-") {
            out.push((name, std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

/// Decodes bytes as libfuzzer-sys does for a `fuzz_target!(|x: T| ..)`.
fn decode<'a, T: Arbitrary<'a>>(bytes: &'a [u8]) -> Option<T> {
    T::arbitrary_take_rest(Unstructured::new(bytes)).ok()
}

#[test]
fn ops_seeds() {
    let seeds = seeds("ops");
    assert!(!seeds.is_empty());
    for (name, bytes) in seeds {
        eprintln!("ops/{name}");
        if let Some(input) = decode::<ops::Input>(&bytes) {
            ops::run(&input);
        }
    }
}

#[test]
fn ops_default_input() {
    // All-zero selectors: a valid 8-entry map with no operations.
    ops::run(&ops::Input::default());
}


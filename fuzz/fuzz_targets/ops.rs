//! The map against the sequential reference model: see `src/ops.rs`.
#![no_main]

use kstackmap_fuzz::ops::{run, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Input| run(&input));

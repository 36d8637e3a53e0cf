//! The stack depot against its sequential model: see `src/depot.rs`.
#![no_main]

use kstackmap_fuzz::depot::{run, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Input| run(&input));

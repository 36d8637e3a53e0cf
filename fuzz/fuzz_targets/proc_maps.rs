//! See `src/proc_maps.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kstackmap_fuzz::proc_maps::run(data));

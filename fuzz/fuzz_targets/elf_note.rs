//! See `src/elf_note.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kstackmap_fuzz::elf_note::run(data));

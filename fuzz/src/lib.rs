//! The checks behind kstackmap's fuzz targets, one module per target.
//!
//! Each module exposes `run(input)`, which panics on any disagreement. The
//! targets in `fuzz_targets/` only decode bytes and call it; the regression
//! tests in `tests/fuzz_regressions.rs` include the same modules (by path)
//! and replay minimized inputs, so a crash found here stays fixed there.

pub mod depot;
pub mod elf_note;
pub mod ops;
pub mod proc_maps;

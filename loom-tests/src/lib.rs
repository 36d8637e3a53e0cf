//! loom models of kstackmap's concurrent protocols.
//!
//! Every model lives in `tests/` and is compiled only with `--cfg loom`:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p loom-tests --release
//! ```
//!
//! Without `--cfg loom` this crate is empty, so a plain `cargo test
//! --workspace` does not run (or build) the models.
#![no_std]

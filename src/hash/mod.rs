//! Hashes of call stacks.
//!
//! - [`jhash`]: the kernel's `jhash2` and the stack map's id hash
//!   ([`trace_hash`]): ids must equal the kernel's, bit for bit, so this is
//!   the only hash the kernel-exact map may use for an id.
//! - `stack`: a keyed 64-bit stack hash built for instruction-level
//!   parallelism (the depot's index hash, and the map's hit-cache key).

mod jhash;
mod stack;

pub use jhash::{jhash2, trace_hash};
#[allow(unused_imports)] // the depot's entry point; the map keeps a StackHasher
pub(crate) use stack::{stack_hash, StackHasher};

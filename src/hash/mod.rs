//! Hashes of call stacks.
//!
//! - [`jhash`]: the kernel's `jhash2` and the stack map's id hash
//!   ([`trace_hash`]): ids must equal the kernel's, bit for bit, so this is
//!   the only hash the kernel-exact map may use for an id.
//! - [`stack`]: the depot's keyed hash (`StackHasher`, `stack_hash`),
//!   built for instruction-level parallelism: ids there are the depot's
//!   own, so it need not be `jhash2`. Crate-internal; the map's hit cache
//!   uses it as a pre-hash (a `StackHasher` with a fixed seed).

mod jhash;
pub(crate) mod stack;

pub use jhash::{jhash2, trace_hash};

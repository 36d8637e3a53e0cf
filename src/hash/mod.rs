//! Hashes of call stacks.
//!
//! - [`jhash`]: the kernel's `jhash2` and the stack map's id hash
//!   ([`trace_hash`]): ids must equal the kernel's, bit for bit, so this is
//!   the only hash the kernel-exact map may use for an id.

mod jhash;

pub use jhash::{jhash2, trace_hash};

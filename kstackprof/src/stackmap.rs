//! The stack map the profiler stores stacks in.
//!
//! TEMPORARY: a local shim with `kstackmap::StackMap`'s signatures, until
//! the real map lands on main.
pub use crate::shim::{Config, MapAttr, StackMap};

//! The stack map the profiler stores stacks in: kstackmap's own.
pub use kstackmap::{Config, MapAttr, StackMap};

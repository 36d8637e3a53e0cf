//! The crate's map made with a kernel map's attributes (and, in
//! `kernel_diff.rs`, behind the replay's `Subject` trait).

use super::{CreateAttr, Errno};
use kstackmap::{Config, Error, MapAttr, StackMap, VmaResolver};

/// A `StackMap` made with the kernel map's attributes; build-id maps
/// resolve through `resolver`.
pub struct Ours<'r> {
    pub map: StackMap,
    pub resolver: Option<&'r dyn VmaResolver>,
    /// `perf_event_max_stack`, for `get_stack`.
    pub max_stack: u32,
}

/// The errno of a library error.
pub fn errno<T>(r: Result<T, Error>) -> Result<T, Errno> {
    r.map_err(|e| e.errno())
}

/// `StackMap::with_config` for `a`, with `nr_cpus` freelists and the
/// sysctl's `max_stack`.
pub fn create(a: &CreateAttr, nr_cpus: usize, max_stack: u32) -> Result<StackMap, Errno> {
    let attr = MapAttr {
        max_entries: a.max_entries,
        key_size: a.key_size,
        value_size: a.value_size,
        map_flags: a.map_flags,
        numa_node: a.numa_node,
    };
    errno(StackMap::with_config(&attr, Config { nr_cpus, max_stack }))
}

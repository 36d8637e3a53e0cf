//! The crate's map behind the replay's [`Subject`](crate::Subject) trait.

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

fn errno<T>(r: Result<T, Error>) -> Result<T, Errno> {
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

impl crate::Subject for Ours<'_> {
    fn get_stackid(&self, cpu: usize, chain: &[u64], flags: u64) -> Result<u32, Errno> {
        errno(match self.resolver {
            Some(r) => self.map.get_stackid_resolved(cpu, chain, flags, r),
            None => self.map.get_stackid(cpu, chain, flags),
        })
    }
    fn lookup(&self, id: u32, value: &mut [u8]) -> Result<(), Errno> {
        errno(self.map.lookup(id, value))
    }
    fn lookup_and_delete(&self, id: u32, value: &mut [u8]) -> Result<(), Errno> {
        errno(self.map.lookup_and_delete(id, value))
    }
    fn delete(&self, id: u32) -> Result<(), Errno> {
        errno(self.map.delete(id))
    }
    fn update(&self, id: u32, value: &[u8], flags: u64) -> Result<(), Errno> {
        errno(self.map.update(id, value, flags))
    }
    fn get_next_key(&self, key: Option<u32>) -> Result<u32, Errno> {
        errno(self.map.get_next_key(key))
    }
    fn get_stack(&self, chain: &[u64], flags: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        errno(kstackmap::get_stack_max(
            chain,
            flags,
            buf,
            self.resolver,
            self.max_stack,
        ))
    }
}

//! The peers of `benches/compare.rs`, each behind the [`Peer`] trait so the
//! harness runs the same workload on every one of them.
//!
//! Stack-map peers (kstackmap, the kernel port) do what a BPF program and
//! the syscall side do: `get_stackid` and `lookup`. Hash-map peers are keyed
//! by the stack (a `Vec<u64>`, default `RandomState` hasher, as a user would
//! write it) with the kernel's id as value; they emulate each operation:
//!
//! | op | stack maps | hash maps |
//! |---|---|---|
//! | `hit` | `get_stackid(flags 0)` | `get(stack)` |
//! | `replace` | `get_stackid(REUSE_STACKID)` | `remove(old)` + `insert(new)` (one lock for the Mutex) |
//! | `read` | `lookup(id)` | `get(stack)` and copy the key out (there is no id index) |
//! | `mix` | `get_stackid(REUSE_STACKID)` | `get`, or `insert` on a miss (never evicts: 10,000 stacks fit) |
//! | `intern` | `get_stackid(0)`: `None` (a drop) on `EEXIST` / `ENOMEM` | `get`, or `insert` with the next id of a counter |
//!
//! The `depot` peer (`StackDepot`) does `intern` for every op: it never
//! evicts, so `replace` and `mix` are an intern of the new stack, and
//! `read` finds the stack by its frames and copies it out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use kstackmap::{trace_hash, uapi, Error};

use crate::kernel_port::KernelPort;

/// The map geometry every peer is built with.
#[derive(Clone, Copy)]
pub struct Params {
    pub max_entries: u32,
    pub value_size: u32,
    pub nr_cpus: usize,
}

impl Params {
    pub fn n_buckets(&self) -> u32 {
        self.max_entries.next_power_of_two()
    }
}

/// One benchmark peer.
pub trait Peer: Sync + Sized {
    fn build(p: &Params) -> Self;
    /// The stack is resident: its id.
    fn hit(&self, cpu: usize, stack: &[u64]) -> Option<u32>;
    /// `new` takes the bucket `old` holds.
    fn replace(&self, cpu: usize, old: &[u64], new: &[u64]) -> Option<u32>;
    /// Reader side: copy out the stack under `id` (hash maps: under `stack`).
    fn read(&self, cpu: usize, id: u32, stack: &[u64], out: &mut [u8]) -> bool;
    /// A profiler's call: the id of `stack`, inserting it if needed.
    fn mix(&self, cpu: usize, stack: &[u64]) -> Option<u32>;
    /// The replay's call: the id of `stack`, stored if new; `None` when the
    /// structure refuses it (a dropped sample). Hash maps hand out ids from
    /// a counter, as the depot does.
    fn intern(&self, cpu: usize, stack: &[u64]) -> Option<u32>;
}

/// The two calls a stack-map peer needs; implemented by kstackmap's map
/// and by the kernel port.
pub trait StackIdMap: Sync {
    fn create(p: &Params) -> Self;
    fn get_stackid(&self, cpu: usize, callchain: &[u64], flags: u64) -> Result<u32, Error>;
    fn lookup(&self, cpu: usize, id: u32, value: &mut [u8]) -> Result<(), Error>;
    /// `BPF_MAP_LOOKUP_AND_DELETE_ELEM`, from `cpu`.
    fn lookup_and_delete(&self, cpu: usize, id: u32, value: &mut [u8]) -> Result<(), Error>;
}

impl StackIdMap for KernelPort {
    fn create(p: &Params) -> Self {
        KernelPort::new(p.max_entries, p.value_size, p.nr_cpus, 127)
    }
    #[inline]
    fn get_stackid(&self, cpu: usize, callchain: &[u64], flags: u64) -> Result<u32, Error> {
        KernelPort::get_stackid(self, cpu, callchain, flags)
    }
    #[inline]
    fn lookup(&self, cpu: usize, id: u32, value: &mut [u8]) -> Result<(), Error> {
        KernelPort::lookup(self, cpu, id, value)
    }
    #[inline]
    fn lookup_and_delete(&self, cpu: usize, id: u32, value: &mut [u8]) -> Result<(), Error> {
        KernelPort::lookup_and_delete(self, cpu, id, value)
    }
}

impl StackIdMap for kstackmap::StackMap {
    fn create(p: &Params) -> Self {
        let attr = kstackmap::MapAttr {
            max_entries: p.max_entries,
            key_size: 4,
            value_size: p.value_size,
            map_flags: 0,
            numa_node: 0,
        };
        let cfg = kstackmap::Config {
            nr_cpus: p.nr_cpus,
            max_stack: 127,
        };
        kstackmap::StackMap::with_config(&attr, cfg).expect("valid bench attributes")
    }
    #[inline]
    fn get_stackid(&self, cpu: usize, callchain: &[u64], flags: u64) -> Result<u32, Error> {
        kstackmap::StackMap::get_stackid(self, cpu, callchain, flags)
    }
    #[inline]
    fn lookup(&self, _cpu: usize, id: u32, value: &mut [u8]) -> Result<(), Error> {
        kstackmap::StackMap::lookup(self, id, value)
    }
    #[inline]
    fn lookup_and_delete(&self, _cpu: usize, id: u32, value: &mut [u8]) -> Result<(), Error> {
        kstackmap::StackMap::lookup_and_delete(self, id, value)
    }
}

/// The map measured in the "kstackmap" column (the kernel port stood in
/// here until `StackMap` landed: a one-line switch).
pub type KStackMap = kstackmap::StackMap;

/// Any [`StackIdMap`] as a [`Peer`].
pub struct StackMapPeer<M>(pub M);

impl<M: StackIdMap> Peer for StackMapPeer<M> {
    fn build(p: &Params) -> Self {
        StackMapPeer(M::create(p))
    }
    #[inline]
    fn hit(&self, cpu: usize, stack: &[u64]) -> Option<u32> {
        self.0.get_stackid(cpu, stack, 0).ok()
    }
    #[inline]
    fn replace(&self, cpu: usize, _old: &[u64], new: &[u64]) -> Option<u32> {
        self.0.get_stackid(cpu, new, uapi::BPF_F_REUSE_STACKID).ok()
    }
    #[inline]
    fn read(&self, cpu: usize, id: u32, _stack: &[u64], out: &mut [u8]) -> bool {
        self.0.lookup(cpu, id, out).is_ok()
    }
    #[inline]
    fn mix(&self, cpu: usize, stack: &[u64]) -> Option<u32> {
        self.0
            .get_stackid(cpu, stack, uapi::BPF_F_REUSE_STACKID)
            .ok()
    }
    #[inline]
    fn intern(&self, cpu: usize, stack: &[u64]) -> Option<u32> {
        self.0.get_stackid(cpu, stack, 0).ok()
    }
}

/// kstackmap's `StackDepot`: never evicts, ids of its own.
pub struct DepotPeer(pub kstackmap::StackDepot);

impl DepotPeer {
    pub fn with(capacity: u32, arena_words: usize, nr_cpus: usize) -> Self {
        let cfg = kstackmap::DepotConfig {
            capacity,
            arena_words,
            nr_cpus,
            seed: 0x5eed_0fde_9000,
        };
        DepotPeer(kstackmap::StackDepot::new(&cfg).expect("valid bench config"))
    }
}

impl Peer for DepotPeer {
    /// `max_entries` stacks, 48 words each on average (the mix pool's mean
    /// depth is 35).
    fn build(p: &Params) -> Self {
        DepotPeer::with(p.max_entries, p.max_entries as usize * 48, p.nr_cpus)
    }
    #[inline]
    fn hit(&self, cpu: usize, stack: &[u64]) -> Option<u32> {
        self.0.intern(cpu, stack).ok()
    }
    #[inline]
    fn replace(&self, cpu: usize, _old: &[u64], new: &[u64]) -> Option<u32> {
        self.0.intern(cpu, new).ok()
    }
    #[inline]
    fn read(&self, cpu: usize, _id: u32, stack: &[u64], out: &mut [u8]) -> bool {
        match self.0.intern(cpu, stack).ok().and_then(|id| self.0.get(id)) {
            Some(words) => {
                copy_out(words, out);
                true
            }
            None => false,
        }
    }
    #[inline]
    fn mix(&self, cpu: usize, stack: &[u64]) -> Option<u32> {
        self.0.intern(cpu, stack).ok()
    }
    #[inline]
    fn intern(&self, cpu: usize, stack: &[u64]) -> Option<u32> {
        self.0.intern(cpu, stack).ok()
    }
}

/// Copy a stack into a lookup buffer as the kernel does: ips little-endian,
/// the tail zeroed.
#[inline]
fn copy_out(stack: &[u64], out: &mut [u8]) {
    let len = stack.len() * 8;
    for (dst, ip) in out[..len].chunks_exact_mut(8).zip(stack) {
        dst.copy_from_slice(&ip.to_le_bytes());
    }
    out[len..].fill(0);
}

/// `std::sync::Mutex<HashMap<Vec<u64>, u32>>`, the naive way.
pub struct MutexHashMap {
    map: Mutex<HashMap<Vec<u64>, u32>>,
    mask: u32,
    ids: AtomicU32,
}

impl Peer for MutexHashMap {
    fn build(p: &Params) -> Self {
        MutexHashMap {
            map: Mutex::new(HashMap::new()),
            mask: p.n_buckets() - 1,
            ids: AtomicU32::new(0),
        }
    }
    fn hit(&self, _cpu: usize, stack: &[u64]) -> Option<u32> {
        self.map.lock().unwrap().get(stack).copied()
    }
    fn replace(&self, _cpu: usize, old: &[u64], new: &[u64]) -> Option<u32> {
        let id = trace_hash(new) & self.mask;
        let mut map = self.map.lock().unwrap();
        map.remove(old);
        map.insert(new.to_vec(), id);
        Some(id)
    }
    fn read(&self, _cpu: usize, _id: u32, stack: &[u64], out: &mut [u8]) -> bool {
        let map = self.map.lock().unwrap();
        match map.get_key_value(stack) {
            Some((k, _)) => {
                copy_out(k, out);
                true
            }
            None => false,
        }
    }
    fn mix(&self, _cpu: usize, stack: &[u64]) -> Option<u32> {
        let mut map = self.map.lock().unwrap();
        if let Some(&id) = map.get(stack) {
            return Some(id);
        }
        let id = trace_hash(stack) & self.mask;
        map.insert(stack.to_vec(), id);
        Some(id)
    }
    fn intern(&self, _cpu: usize, stack: &[u64]) -> Option<u32> {
        let mut map = self.map.lock().unwrap();
        if let Some(&id) = map.get(stack) {
            return Some(id);
        }
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        map.insert(stack.to_vec(), id);
        Some(id)
    }
}

/// `dashmap::DashMap<Vec<u64>, u32>` (sharded `RwLock`s).
pub struct DashMapPeer {
    map: dashmap::DashMap<Vec<u64>, u32>,
    mask: u32,
    ids: AtomicU32,
}

impl Peer for DashMapPeer {
    fn build(p: &Params) -> Self {
        DashMapPeer {
            map: dashmap::DashMap::new(),
            mask: p.n_buckets() - 1,
            ids: AtomicU32::new(0),
        }
    }
    fn hit(&self, _cpu: usize, stack: &[u64]) -> Option<u32> {
        self.map.get(stack).map(|r| *r)
    }
    fn replace(&self, _cpu: usize, old: &[u64], new: &[u64]) -> Option<u32> {
        let id = trace_hash(new) & self.mask;
        self.map.remove(old);
        self.map.insert(new.to_vec(), id);
        Some(id)
    }
    fn read(&self, _cpu: usize, _id: u32, stack: &[u64], out: &mut [u8]) -> bool {
        match self.map.get(stack) {
            Some(r) => {
                copy_out(r.key(), out);
                true
            }
            None => false,
        }
    }
    fn mix(&self, _cpu: usize, stack: &[u64]) -> Option<u32> {
        if let Some(r) = self.map.get(stack) {
            return Some(*r);
        }
        let id = trace_hash(stack) & self.mask;
        self.map.insert(stack.to_vec(), id);
        Some(id)
    }
    fn intern(&self, _cpu: usize, stack: &[u64]) -> Option<u32> {
        if let Some(r) = self.map.get(stack) {
            return Some(*r);
        }
        // The entry API keeps two racing inserters of one stack to one id.
        let id = *self
            .map
            .entry(stack.to_vec())
            .or_insert_with(|| self.ids.fetch_add(1, Ordering::Relaxed));
        Some(id)
    }
}

/// `papaya::HashMap<Vec<u64>, u32>` (lock-free, epoch-reclaimed).
pub struct PapayaPeer {
    map: papaya::HashMap<Vec<u64>, u32>,
    mask: u32,
    ids: AtomicU32,
}

impl Peer for PapayaPeer {
    fn build(p: &Params) -> Self {
        PapayaPeer {
            map: papaya::HashMap::new(),
            mask: p.n_buckets() - 1,
            ids: AtomicU32::new(0),
        }
    }
    fn hit(&self, _cpu: usize, stack: &[u64]) -> Option<u32> {
        self.map.pin().get(stack).copied()
    }
    fn replace(&self, _cpu: usize, old: &[u64], new: &[u64]) -> Option<u32> {
        let id = trace_hash(new) & self.mask;
        let map = self.map.pin();
        map.remove(old);
        map.insert(new.to_vec(), id);
        Some(id)
    }
    fn read(&self, _cpu: usize, _id: u32, stack: &[u64], out: &mut [u8]) -> bool {
        let map = self.map.pin();
        match map.get_key_value(stack) {
            Some((k, _)) => {
                copy_out(k, out);
                true
            }
            None => false,
        }
    }
    fn mix(&self, _cpu: usize, stack: &[u64]) -> Option<u32> {
        let map = self.map.pin();
        if let Some(&id) = map.get(stack) {
            return Some(id);
        }
        let id = trace_hash(stack) & self.mask;
        map.insert(stack.to_vec(), id);
        Some(id)
    }
    fn intern(&self, _cpu: usize, stack: &[u64]) -> Option<u32> {
        let map = self.map.pin();
        if let Some(&id) = map.get(stack) {
            return Some(id);
        }
        let id =
            map.get_or_insert_with(stack.to_vec(), || self.ids.fetch_add(1, Ordering::Relaxed));
        Some(*id)
    }
}

/// The floor: one `jhash2` over the trace and one compare with a resident
/// copy. Single writer at build time, then read-only: no atomics, no locks.
pub struct Floor {
    resident: Vec<(u32, Vec<u64>)>,
    mask: u32,
}

impl Floor {
    pub fn build(p: &Params, stacks: &[Vec<u64>]) -> Self {
        let n = p.n_buckets();
        let mut resident = vec![(0, Vec::new()); n as usize];
        for s in stacks {
            let h = trace_hash(s);
            resident[(h & (n - 1)) as usize] = (h, s.clone());
        }
        Floor {
            resident,
            mask: n - 1,
        }
    }

    #[inline]
    pub fn hit(&self, stack: &[u64]) -> Option<u32> {
        let h = trace_hash(stack);
        let id = h & self.mask;
        let (rh, r) = &self.resident[id as usize];
        (*rh == h && r.as_slice() == stack).then_some(id)
    }
}

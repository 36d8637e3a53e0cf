//! A port of the kernel's stack trace map (`kernel/bpf/stackmap.c` with
//! `kernel/bpf/percpu_freelist.c`), written only as a benchmark peer.
//!
//! What is kept from the kernel, on purpose:
//! - Elements are preallocated and laid out as the kernel's
//!   `struct stack_map_bucket`: a 16-byte header (`fnode.next`, then
//!   `hash | nr << 32`) followed by `value_size` bytes of ips.
//! - The freelist is per CPU, each list a singly linked stack behind its
//!   own spinlock (`spin::Mutex`, like `raw_spinlock_t`). `push` goes to the
//!   caller's CPU; `pop` peeks at each head without the lock
//!   (`READ_ONCE(head->first)`), and locks only a list that looks non-empty,
//!   starting at the caller's CPU and stealing round-robin. `populate`
//!   spreads the elements in contiguous runs over the CPUs.
//! - Buckets hold element indices (`i + 1`, 0 = empty); publishing is one
//!   `swap` (`xchg`), and `get_stackid` is `__bpf_get_stackid` line by line,
//!   including its tolerated race: the compare reads a slot that may be
//!   recycled meanwhile (there is no sequence number to re-check).
//! - `lookup` is `bpf_stackmap_copy`: `xchg(NULL)`, copy, swap back, and
//!   push whatever a concurrent writer put there meanwhile;
//!   `lookup_and_delete` is 6.18's `bpf_stackmap_extract` with delete:
//!   `xchg(NULL)`, copy, push to the current CPU's list.
//!
//! What differs: ips are stored as `AtomicU64` words accessed with
//! `Relaxed` loads and stores (plain `mov`s on x86-64), so the kernel's
//! tolerated race is defined behaviour in Rust, exactly as kstackmap stores
//! them. The compare is therefore a word loop, not `memcmp`; kstackmap pays
//! the same. Outside the kernel a spinlock holder can be preempted, which
//! the kernel prevents by disabling preemption; the 4- and 8-thread rows
//! show what that costs.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use kstackmap::{trace_hash, uapi, Error};

const NIL: u32 = u32::MAX;

/// `struct pcpu_freelist_head`: a list head and its lock.
struct Head {
    lock: spin::Mutex<()>,
    /// The first free element, or `NIL`. Written only under `lock`; read
    /// without it as a hint (the kernel's `READ_ONCE(head->first)`).
    first: AtomicU32,
}

/// The kernel design, ported. See the module docs.
pub struct KernelPort {
    n_buckets: u32,
    value_words: usize,
    /// Words per element: 2 header words + `value_words`.
    stride: usize,
    max_stack: u32,
    /// `max_entries * stride` words. Word 0 of an element is `fnode.next`
    /// (an index, `NIL` ends the list), word 1 is `hash | nr << 32`.
    elems: Box<[AtomicU64]>,
    /// 0 = empty, `i + 1` = element `i`.
    buckets: Box<[AtomicU32]>,
    /// One per CPU, each on its own cache line like per-CPU data.
    heads: Box<[CachePadded<Head>]>,
}

impl KernelPort {
    /// `stack_map_alloc` + `prealloc_elems_and_freelist` (no attribute
    /// checks: the benchmark only builds valid maps).
    pub fn new(max_entries: u32, value_size: u32, nr_cpus: usize, max_stack: u32) -> Self {
        let n_buckets = max_entries.next_power_of_two();
        let value_words = value_size as usize / 8;
        let stride = 2 + value_words;
        let elems = (0..max_entries as usize * stride)
            .map(|_| AtomicU64::new(0))
            .collect();
        let buckets = (0..n_buckets).map(|_| AtomicU32::new(0)).collect();
        let heads = (0..nr_cpus.max(1))
            .map(|_| {
                CachePadded::new(Head {
                    lock: spin::Mutex::new(()),
                    first: AtomicU32::new(NIL),
                })
            })
            .collect();
        let map = KernelPort {
            n_buckets,
            value_words,
            stride,
            max_stack,
            elems,
            buckets,
            heads,
        };
        map.populate(max_entries);
        map
    }

    /// `pcpu_freelist_populate`: `nr / nr_cpus` elements per CPU, the first
    /// `nr % nr_cpus` CPUs one more, in address order.
    fn populate(&self, nr: u32) {
        let cpus = self.heads.len() as u32;
        let (n, m) = (nr / cpus, nr % cpus);
        let mut i = 0;
        for cpu in 0..cpus {
            for _ in 0..n + u32::from(cpu < m) {
                self.push(cpu as usize, i);
                i += 1;
            }
        }
    }

    fn next_word(&self, elem: u32) -> &AtomicU64 {
        &self.elems[elem as usize * self.stride]
    }

    fn header_word(&self, elem: u32) -> &AtomicU64 {
        &self.elems[elem as usize * self.stride + 1]
    }

    fn data(&self, elem: u32) -> &[AtomicU64] {
        let base = elem as usize * self.stride + 2;
        &self.elems[base..base + self.value_words]
    }

    /// `pcpu_freelist_push`: onto the caller's CPU list, under its lock.
    fn push(&self, cpu: usize, elem: u32) {
        let head = &self.heads[cpu % self.heads.len()];
        let _guard = head.lock.lock();
        // Relaxed: both words are only written under this lock, whose
        // release (unlock) orders them for the next holder.
        self.next_word(elem)
            .store(head.first.load(Ordering::Relaxed) as u64, Ordering::Relaxed);
        head.first.store(elem, Ordering::Relaxed);
    }

    /// `pcpu_freelist_pop`: the caller's CPU first, then round-robin.
    fn pop(&self, cpu: usize) -> Option<u32> {
        let n = self.heads.len();
        let orig = cpu % n;
        let mut c = orig;
        loop {
            let head = &self.heads[c];
            // Relaxed: a hint only; the value that counts is re-read under
            // the lock.
            if head.first.load(Ordering::Relaxed) != NIL {
                let _guard = head.lock.lock();
                let first = head.first.load(Ordering::Relaxed);
                if first != NIL {
                    let next = self.next_word(first).load(Ordering::Relaxed) as u32;
                    head.first.store(next, Ordering::Relaxed);
                    return Some(first);
                }
            }
            c = (c + 1) % n;
            if c == orig {
                return None;
            }
        }
    }

    /// `bpf_get_stackid` + `__bpf_get_stackid` for an ips map, `callchain`
    /// being what `get_perf_callchain` would have produced.
    pub fn get_stackid(&self, cpu: usize, callchain: &[u64], flags: u64) -> Result<u32, Error> {
        if flags
            & !(uapi::BPF_F_SKIP_FIELD_MASK
                | uapi::BPF_F_USER_STACK
                | uapi::BPF_F_FAST_STACK_CMP
                | uapi::BPF_F_REUSE_STACKID)
            != 0
        {
            return Err(Error::Inval);
        }
        let skip = (flags & uapi::BPF_F_SKIP_FIELD_MASK) as usize;
        let max_depth = (self.value_words + skip).min(self.max_stack as usize);
        let nr = callchain.len().min(max_depth);
        if nr <= skip {
            return Err(Error::Fault);
        }
        let ips = &callchain[skip..nr];
        let trace_nr = ips.len() as u32;
        let hash = trace_hash(ips);
        let id = hash & (self.n_buckets - 1);
        // Acquire: pairs with the publishing swap below (the kernel relies
        // on the address dependency after READ_ONCE).
        let bucket = self.buckets[id as usize].load(Ordering::Acquire);
        if bucket != 0 {
            let header = self.header_word(bucket - 1).load(Ordering::Relaxed);
            let hash_matches = header as u32 == hash;
            if hash_matches && flags & uapi::BPF_F_FAST_STACK_CMP != 0 {
                return Ok(id);
            }
            if hash_matches
                && (header >> 32) as u32 == trace_nr
                && self
                    .data(bucket - 1)
                    .iter()
                    .zip(ips)
                    .all(|(w, &ip)| w.load(Ordering::Relaxed) == ip)
            {
                return Ok(id);
            }
            if flags & uapi::BPF_F_REUSE_STACKID == 0 {
                return Err(Error::Exist);
            }
        }
        let new = self.pop(cpu).ok_or(Error::NoMem)?;
        for (w, &ip) in self.data(new).iter().zip(ips) {
            w.store(ip, Ordering::Relaxed);
        }
        self.header_word(new)
            .store(hash as u64 | (trace_nr as u64) << 32, Ordering::Relaxed);
        // AcqRel: xchg is a full barrier in the kernel; Release publishes
        // the element's words, Acquire takes the old one over.
        let old = self.buckets[id as usize].swap(new + 1, Ordering::AcqRel);
        if old != 0 {
            self.push(cpu, old - 1);
        }
        Ok(id)
    }

    /// `bpf_stackmap_extract(..., delete = true)` (Linux 6.18's
    /// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` for stack maps), run on `cpu`:
    /// `xchg(NULL)`, copy, and push the element to this CPU's freelist.
    pub fn lookup_and_delete(&self, cpu: usize, id: u32, value: &mut [u8]) -> Result<(), Error> {
        if id >= self.n_buckets {
            return Err(Error::NoEnt);
        }
        let bucket = self.buckets[id as usize].swap(0, Ordering::AcqRel);
        if bucket == 0 {
            return Err(Error::NoEnt);
        }
        let nr = (self.header_word(bucket - 1).load(Ordering::Relaxed) >> 32) as usize;
        let len = nr * 8;
        for (dst, w) in value[..len].chunks_exact_mut(8).zip(self.data(bucket - 1)) {
            dst.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        value[len..].fill(0);
        self.push(cpu, bucket - 1);
        Ok(())
    }

    /// `bpf_stackmap_copy`, run on `cpu` (where a displaced element goes).
    pub fn lookup(&self, cpu: usize, id: u32, value: &mut [u8]) -> Result<(), Error> {
        if id >= self.n_buckets {
            return Err(Error::NoEnt);
        }
        let bucket = self.buckets[id as usize].swap(0, Ordering::AcqRel);
        if bucket == 0 {
            return Err(Error::NoEnt);
        }
        let nr = (self.header_word(bucket - 1).load(Ordering::Relaxed) >> 32) as usize;
        let len = nr * 8;
        for (dst, w) in value[..len].chunks_exact_mut(8).zip(self.data(bucket - 1)) {
            dst.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        value[len..].fill(0);
        let old = self.buckets[id as usize].swap(bucket, Ordering::AcqRel);
        if old != 0 {
            self.push(cpu, old - 1);
        }
        Ok(())
    }
}

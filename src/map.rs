//! The stack trace map: `bpf_get_stackid` and the syscall side.
//!
//! # Protocols
//!
//! **Elements.** Slot `i` is `3 + value_size / 4` atomic words: a sequence
//! number, the trace hash, the frame count `nr`, then the value's bytes as
//! native-endian `u32` words (so `lookup` hands out exactly the bytes the
//! kernel would). A slot is in exactly one place at any time: the freelist,
//! one bucket, or the hands of one thread (a writer between `pop` and
//! publish, or a remover between taking it out of its bucket and `push`).
//!
//! **Writes (seqlock).** Only the thread holding a slot writes it: it makes
//! the sequence number odd, stores the header and data, then makes it even
//! again. Readers never write.
//!
//! **Publish.** A bucket is an `AtomicU32`: 0 = empty, `i + 1` = slot `i`.
//! With `BPF_F_REUSE_STACKID` a new slot is published with one `swap` (the
//! kernel's `xchg`) and the old one goes back to the freelist. Without it,
//! the publish is a `compare_exchange` from the value the decision was made
//! on, so two racing inserters never throw each other's stack away: the
//! loser decides again (a hit, or `EEXIST`), which is what it would have
//! seen had it come second.
//!
//! **Reads (`observe`).** Load the bucket, read the slot's sequence number,
//! read, then re-check the bucket and the sequence number; retry on any
//! change. A read that passes saw a slot that held one complete version
//! for the whole read and sat in this bucket during the call. Readers
//! never take a slot out of its bucket, so unlike the kernel's
//! `bpf_stackmap_copy` (which swaps the bucket to NULL and back) a lookup
//! can't make a concurrent insert disappear.
//!
//! # Invariants
//!
//! - Every slot index `< max_entries` is in exactly one of: the freelist,
//!   one bucket, one thread's hands.
//! - A slot in a bucket has an even sequence number and is not written.
//! - A slot in bucket `id` holds a trace whose `hash & (n_buckets - 1)` is
//!   `id`.
//!
//! # Progress
//!
//! `get_stackid` is lock-free: the freelist is, publish is one atomic
//! read-modify-write, and a read retries only because a writer completed a
//! change to that bucket or slot in the meantime. It never allocates,
//! blocks or panics. The sequence number is 32 bits and moves by 2 per
//! rewrite of a slot: a read is fooled only if one slot is rewritten 2^31
//! times while the read is in progress.

use core::marker::PhantomData;
use core::mem::MaybeUninit;

use crate::attr::{Config, Geometry, MapAttr};
use crate::build_id::{resolve_frames, VmaResolver};
use crate::callchain::{count_kernel_ips, pe_user_skip};
use crate::freelist::FreeList;
use crate::jhash::trace_hash;
use crate::storage::{Layout, Region, HDR_WORDS};
use crate::sync::{fence, spin_loop, AtomicU32, Ordering};
use crate::uapi::{
    StackBuildId, BPF_F_FAST_STACK_CMP, BPF_F_RDONLY, BPF_F_REUSE_STACKID, BPF_F_SKIP_FIELD_MASK,
    BPF_F_USER_STACK, BPF_F_WRONLY, STACKID_FLAG_MASK,
};
use crate::Error;

const SEQ: usize = 0;
const HASH: usize = 1;
const NR: usize = 2;

/// A stack trace map over memory that lives for `'a`.
///
/// [`StackMap`] (= `StackMapIn<'static>`) is the one most code uses; a
/// shorter `'a` comes from [`StackMapIn::new_in`] over borrowed memory.
///
/// All methods take `&self` and may be called from any number of threads
/// at once. `cpu` arguments pick the freelist shard (`cpu % nr_cpus`): pass
/// the current CPU, or any stable per-thread number.
///
/// # Invariants
///
/// `region` was initialised for `geo` by `Region::init` and stays valid
/// and unaliased for `'a` (or until `Drop`, when `owned` is set).
pub struct StackMapIn<'a> {
    geo: Geometry,
    elem_words: usize,
    freelist: FreeList<'a>,
    buckets: &'a [AtomicU32],
    elems: &'a [AtomicU32],
    region: Region<'a>,
    /// The block to free on drop, when the map allocated it.
    #[cfg(feature = "alloc")]
    owned: Option<(core::ptr::NonNull<u8>, core::alloc::Layout)>,
    _borrow: PhantomData<&'a mut [u8]>,
}

/// A stack trace map that owns its memory or borrows it for `'static`.
pub type StackMap = StackMapIn<'static>;

// SAFETY: every field shared between threads is an atomic; the raw block
// pointer is only used by `Drop`, which has `&mut self`.
unsafe impl Send for StackMapIn<'_> {}
// SAFETY: as above: all shared state is atomics, accessed only through
// `&self` methods that follow the protocols in the module header.
unsafe impl Sync for StackMapIn<'_> {}

/// What a reader saw in a bucket.
enum Seen<T> {
    Empty,
    /// The bucket word (slot + 1) and what the read returned.
    Slot(u32, T),
}

/// The outcome of comparing a trace with a bucket's element.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Same,
    Other,
}

/// What `__bpf_get_stackid` does after comparing with the bucket: `Err(Ok)`
/// a hit, `Err(Err(Exist))` a collision without REUSE, `Ok(expect)` store
/// the trace, publishing over the bucket word `expect` (0 when empty).
fn decide(seen: Seen<Cmp>, reuse: bool) -> Result<u32, Result<(), Error>> {
    match seen {
        Seen::Slot(_, Cmp::Same) => Err(Ok(())),
        Seen::Slot(_, Cmp::Other) if !reuse => Err(Err(Error::Exist)),
        Seen::Slot(b, Cmp::Other) => Ok(b),
        Seen::Empty => Ok(0),
    }
}

/// One slot's words: header then data.
///
/// # Invariants
///
/// `seq` is `words[SEQ]`: looked up once, in [`StackMapIn::elem`], so that
/// reaching it needs no index check (and no panic path) afterwards.
#[derive(Clone, Copy)]
struct Elem<'m> {
    words: &'m [AtomicU32],
    seq: &'m AtomicU32,
}

impl<'m> Elem<'m> {
    fn word(&self, i: usize) -> u32 {
        // Relaxed: element words are read under the sequence number, whose
        // Acquire load and fence order these loads (see `observe`).
        self.words.get(i).map_or(0, |w| w.load(Ordering::Relaxed))
    }
    fn set(&self, i: usize, v: u32) {
        // Relaxed: only the slot's owner writes, between the odd store and
        // the Release store of the sequence number (see `write`).
        if let Some(w) = self.words.get(i) {
            w.store(v, Ordering::Relaxed);
        }
    }
    fn seq(&self) -> &'m AtomicU32 {
        self.seq
    }
    fn data(&self) -> &'m [AtomicU32] {
        self.words.get(HDR_WORDS..).unwrap_or(&[])
    }

    /// Makes the sequence number odd: from here until `end_write` readers
    /// that look at this slot retry.
    fn begin_write(&self) -> u32 {
        let seq = self.seq();
        // Relaxed: only the owner writes `seq`, so it reads its own value.
        let s = seq.load(Ordering::Relaxed);
        seq.store(s.wrapping_add(1), Ordering::Relaxed);
        // Release fence: pairs with the reader's Acquire fence in `observe`,
        // so a reader that sees any data store below also sees the odd seq.
        fence(Ordering::Release);
        s
    }

    fn end_write(&self, s: u32) {
        // Release: pairs with the Acquire load of `seq` in `observe`; a
        // reader that sees the even value sees all data stored before it.
        self.seq().store(s.wrapping_add(2), Ordering::Release);
    }

    fn eq_ips(&self, ips: &[u64]) -> bool {
        let data = self.data();
        // No early exit: a mismatch is nearly always caught by the hash
        // first, and the branch-free loop is shorter.
        let Some(data) = data.get(..ips.len() * 2) else {
            return false;
        };
        let mut diff = 0;
        for (w, &ip) in data.chunks_exact(2).zip(ips) {
            let [lo, hi] = ip_words(ip);
            diff |= (w[0].load(Ordering::Relaxed) ^ lo) | (w[1].load(Ordering::Relaxed) ^ hi);
        }
        diff == 0
    }

    fn eq_words(&self, other: &Elem<'_>, n: usize) -> bool {
        let (a, b) = (self.data(), other.data());
        n <= a.len()
            && n <= b.len()
            && a.iter()
                .zip(b)
                .take(n)
                .all(|(x, y)| x.load(Ordering::Relaxed) == y.load(Ordering::Relaxed))
    }
}

/// A u64 as the two u32 words of its native-endian bytes, in memory order.
#[inline(always)]
fn ip_words(ip: u64) -> [u32; 2] {
    let b = ip.to_ne_bytes();
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
    ]
}

impl StackMapIn<'static> {
    /// Creates a map with one CPU and `max_stack` 127 ([`Config::default`]).
    ///
    /// Errors are the kernel's `BPF_MAP_CREATE` errnos: `Inval` for bad
    /// flags or sizes, `TooBig` when `max_entries > 2^31`; `NoMem` when the
    /// allocation fails.
    #[cfg(feature = "alloc")]
    pub fn new(attr: &MapAttr) -> Result<StackMap, Error> {
        Self::with_config(attr, Config::default())
    }

    /// Creates a map for `cfg.nr_cpus` CPUs and a `perf_event_max_stack`
    /// of `cfg.max_stack`, allocating its memory (fallibly: `NoMem`).
    #[cfg(feature = "alloc")]
    pub fn with_config(attr: &MapAttr, cfg: Config) -> Result<StackMap, Error> {
        let geo = Geometry::new(attr, &cfg)?;
        let layout = Layout::new(&geo)?;
        let block = core::alloc::Layout::from_size_align(layout.size.max(1), Layout::ALIGN)
            .map_err(|_| Error::NoMem)?;
        // SAFETY: `block` has a non-zero size.
        let base = unsafe { alloc::alloc::alloc(block) };
        let base = core::ptr::NonNull::new(base).ok_or(Error::NoMem)?;
        // SAFETY: fresh allocation of `layout.size` bytes aligned to ALIGN,
        // owned by the map until `Drop` frees it; nothing else points to it.
        let region = unsafe { Region::init(base.as_ptr(), &geo, &layout) };
        let mut map = Self::from_region(geo, layout, region);
        map.owned = Some((base, block));
        Ok(map)
    }
}

impl<'a> StackMapIn<'a> {
    /// Bytes of memory [`new_in`](StackMapIn::new_in) needs for this map,
    /// alignment slack included; errors as for `StackMap::with_config`.
    pub fn storage_size(attr: &MapAttr, cfg: Config) -> Result<usize, Error> {
        let geo = Geometry::new(attr, &cfg)?;
        Ok(Layout::new(&geo)?.storage_size())
    }

    /// Creates a map in caller-provided memory, with no allocator: for a
    /// kernel module's arena or a [`StaticStorage`](crate::StaticStorage).
    ///
    /// `mem` must have at least [`storage_size`](StackMapIn::storage_size)
    /// bytes (any alignment), else `NoMem`. The map borrows it for `'a`.
    pub fn new_in(
        attr: &MapAttr,
        cfg: Config,
        mem: &'a mut [MaybeUninit<u8>],
    ) -> Result<StackMapIn<'a>, Error> {
        let geo = Geometry::new(attr, &cfg)?;
        let layout = Layout::new(&geo)?;
        let start = mem.as_mut_ptr().cast::<u8>();
        let pad = start.align_offset(Layout::ALIGN);
        if pad == usize::MAX || mem.len() < pad || mem.len() - pad < layout.size {
            return Err(Error::NoMem);
        }
        // SAFETY: `pad + layout.size <= mem.len()`, so the aligned block is
        // inside `mem`, which we borrow mutably (exclusively) for 'a.
        let region = unsafe { Region::init(start.add(pad), &geo, &layout) };
        Ok(Self::from_region(geo, layout, region))
    }

    fn from_region(geo: Geometry, layout: Layout, region: Region<'a>) -> Self {
        let freelist = FreeList::new(region.heads, region.links);
        freelist.populate();
        StackMapIn {
            geo,
            elem_words: layout.elem_words,
            freelist,
            buckets: region.buckets,
            elems: region.elems,
            region,
            #[cfg(feature = "alloc")]
            owned: None,
            _borrow: PhantomData,
        }
    }

    /// The attributes the map was created with.
    pub fn attr(&self) -> &MapAttr {
        &self.geo.attr
    }

    /// Number of buckets: `max_entries` rounded up to a power of two. Ids
    /// are `< n_buckets`.
    pub fn n_buckets(&self) -> u32 {
        self.geo.n_buckets
    }

    /// Bytes of memory the map uses: its own struct, the freelist heads and
    /// links, the buckets and the elements. The kernel's `map_mem_usage` for
    /// the same attributes is
    /// `sizeof(struct bpf_stack_map) + n_buckets * 8 + max_entries * (16 + value_size)`;
    /// ours has 4-byte buckets and a
    /// 16-byte element overhead (12-byte header + 4-byte freelist link).
    pub fn mem_usage(&self) -> usize {
        size_of::<Self>()
            + core::mem::size_of_val(self.region.heads)
            + core::mem::size_of_val(self.region.links)
            + core::mem::size_of_val(self.buckets)
            + core::mem::size_of_val(self.elems)
    }

    fn elem(&self, slot: u32) -> Option<Elem<'a>> {
        let start = (slot as usize).checked_mul(self.elem_words)?;
        let words = self.elems.get(start..start.checked_add(self.elem_words)?)?;
        // INVARIANT: `seq` is `words[SEQ]`. Never `None`: an element has
        // `HDR_WORDS` header words, so its slice is not empty.
        let seq = words.get(SEQ)?;
        Some(Elem { words, seq })
    }

    fn bucket(&self, id: u32) -> Option<&'a AtomicU32> {
        self.buckets.get(id as usize)
    }

    /// Reads bucket `id`'s element with `read`, retrying until the read saw
    /// one complete version of a slot that sat in the bucket during the call.
    fn observe<T>(&self, bucket: &AtomicU32, mut read: impl FnMut(Elem<'a>) -> T) -> Seen<T> {
        loop {
            // Acquire: pairs with the publishing swap / compare_exchange
            // (Release), so the element's words are visible.
            let b = bucket.load(Ordering::Acquire);
            let Some(e) = b.checked_sub(1).and_then(|slot| self.elem(slot)) else {
                return Seen::Empty;
            };
            // Acquire: pairs with `end_write`'s Release store.
            let s1 = e.seq().load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let out = read(e);
                // Acquire fence: pairs with `begin_write`'s Release fence; if
                // `read` saw a later writer's data, the loads below see it.
                fence(Ordering::Acquire);
                // Acquire: if the slot was taken out and published here again,
                // this load makes the new version's sequence number visible.
                let b2 = bucket.load(Ordering::Acquire);
                // Relaxed: ordered after the fence above.
                let s2 = e.seq().load(Ordering::Relaxed);
                if b2 == b && s2 == s1 {
                    return Seen::Slot(b, out);
                }
            }
            // A writer completed a change to this bucket or slot since the
            // load above: look again.
            spin_loop();
        }
    }

    /// Writes the header and, through `data`, the frames of the slot we hold.
    fn write(&self, e: Elem<'a>, hash: u32, nr: u32, data: impl FnOnce(&[AtomicU32])) {
        let s = e.begin_write();
        e.set(HASH, hash);
        e.set(NR, nr);
        data(e.data());
        e.end_write(s);
    }

    /// `bpf_get_stackid`: the id of `callchain`'s stack, storing it if new.
    ///
    /// `callchain` is the whole chain, innermost frame first, as
    /// `get_perf_callchain` returns it; the map takes the first
    /// `min(value_size / 8 + skip, max_stack)` frames (like the kernel's
    /// walk), skips `flags & BPF_F_SKIP_FIELD_MASK`, and hashes the rest.
    /// On a build-id map the frames become [`StackBuildId`]s with status IP
    /// (use [`get_stackid_resolved`](StackMapIn::get_stackid_resolved) to
    /// resolve user frames).
    ///
    /// Errors, as the kernel: `Inval` for unknown flags, `Fault` when the
    /// chain is not longer than the skip, `Exist` when another stack holds
    /// the bucket and `BPF_F_REUSE_STACKID` is not set, `NoMem` when every
    /// element is in use (on build-id maps even for a known stack: they pop
    /// an element before comparing, as the kernel does).
    ///
    /// # Guarantee (stronger than the kernel's)
    ///
    /// `Ok(id)` from a full compare means that, at one moment during this
    /// call, bucket `id` held an element containing exactly this stack: the
    /// compare is re-checked against the element's sequence number and the
    /// bucket, so an element being recycled under the compare can't produce
    /// a false hit (the kernel's `memcmp` can). With `BPF_F_FAST_STACK_CMP`
    /// only the hash is compared, as in the kernel. Never allocates, blocks
    /// or panics.
    pub fn get_stackid(&self, cpu: usize, callchain: &[u64], flags: u64) -> Result<u32, Error> {
        self.stackid(cpu, callchain, flags, None::<&dyn VmaResolver>)
    }

    /// [`get_stackid`](StackMapIn::get_stackid) for build-id maps, turning
    /// user frames (`BPF_F_USER_STACK`) into `(build id, file offset)`
    /// through `resolver`, as the kernel's `stack_map_get_build_id_offset`.
    /// On an ips map the resolver is not used.
    pub fn get_stackid_resolved<R: VmaResolver + ?Sized>(
        &self,
        cpu: usize,
        callchain: &[u64],
        flags: u64,
        resolver: &R,
    ) -> Result<u32, Error> {
        self.stackid(cpu, callchain, flags, Some(resolver))
    }

    /// `bpf_get_stackid_pe`: `callchain` is a perf sample's callchain, with
    /// `PERF_CONTEXT_*` marker words as perf delivers them. The kernel
    /// stack is the chain up to the first `PERF_CONTEXT_USER`; with
    /// `BPF_F_USER_STACK` the skip grows by that length (`Fault` past 255).
    /// As the kernel's depth fix (read off Linux 6.18.44; older kernels
    /// could copy past the value here): `Fault` when the part is not longer
    /// than the skip, else the stack is the part's next `min(len - skip,
    /// depth - skip)` words, `depth = min(value_size / elem + skip,
    /// max_stack)` and the difference taken modulo 2^32. So on a perf
    /// chain longer than `max_stack` (its markers come on top of
    /// `max_stack` ips), a skip of `max_stack` gives the empty stack and a
    /// larger one the words past it.
    pub fn get_stackid_pe(&self, cpu: usize, callchain: &[u64], flags: u64) -> Result<u32, Error> {
        self.stackid_pe(cpu, callchain, flags, None::<&dyn VmaResolver>)
    }

    /// [`get_stackid_pe`](StackMapIn::get_stackid_pe) with a resolver for
    /// build-id maps.
    pub fn get_stackid_pe_resolved<R: VmaResolver + ?Sized>(
        &self,
        cpu: usize,
        callchain: &[u64],
        flags: u64,
        resolver: &R,
    ) -> Result<u32, Error> {
        self.stackid_pe(cpu, callchain, flags, Some(resolver))
    }

    fn stackid<R: VmaResolver + ?Sized>(
        &self,
        cpu: usize,
        callchain: &[u64],
        flags: u64,
        resolver: Option<&R>,
    ) -> Result<u32, Error> {
        if flags & !STACKID_FLAG_MASK != 0 {
            return Err(Error::Inval);
        }
        self.stackid_walk(cpu, callchain, flags, resolver)
    }

    /// Cuts the chain to the kernel walk's depth, `min(value_frames + skip,
    /// max_stack)`, then runs `__bpf_get_stackid`. Flags are checked.
    fn stackid_walk<R: VmaResolver + ?Sized>(
        &self,
        cpu: usize,
        callchain: &[u64],
        flags: u64,
        resolver: Option<&R>,
    ) -> Result<u32, Error> {
        let skip = (flags & BPF_F_SKIP_FIELD_MASK) as u32;
        let depth = self.geo.max_depth(skip) as usize;
        let trace = callchain.get(..depth).unwrap_or(callchain);
        self.stackid_trace(cpu, trace, flags, resolver)
    }

    fn stackid_pe<R: VmaResolver + ?Sized>(
        &self,
        cpu: usize,
        callchain: &[u64],
        flags: u64,
        resolver: Option<&R>,
    ) -> Result<u32, Error> {
        if flags & !STACKID_FLAG_MASK != 0 {
            return Err(Error::Inval);
        }
        let nr_kernel = count_kernel_ips(callchain);
        let (part, flags) = if flags & BPF_F_USER_STACK == 0 {
            (callchain.get(..nr_kernel).unwrap_or(callchain), flags)
        } else {
            (callchain, pe_user_skip(flags, nr_kernel)?)
        };
        // The kernel's `__bpf_get_stackid(map, trace, flags, max_depth)`:
        // `trace_nr = min(nr - skip, max_depth - skip)` in u32, after the
        // EFAULT check on the whole part. At most `value_frames` words.
        let skip = (flags & BPF_F_SKIP_FIELD_MASK) as u32;
        let nr = u32::try_from(part.len()).unwrap_or(u32::MAX);
        if nr <= skip {
            return Err(Error::Fault);
        }
        let n = (nr - skip).min(self.geo.max_depth(skip).wrapping_sub(skip));
        let ips = part
            .get(skip as usize..)
            .and_then(|rest| rest.get(..n as usize))
            .unwrap_or(&[]);
        self.stackid_ips(cpu, ips, flags, resolver)
    }

    /// `__bpf_get_stackid` on a trace already cut to the walk's depth.
    fn stackid_trace<R: VmaResolver + ?Sized>(
        &self,
        cpu: usize,
        trace: &[u64],
        flags: u64,
        resolver: Option<&R>,
    ) -> Result<u32, Error> {
        let skip = (flags & BPF_F_SKIP_FIELD_MASK) as usize;
        if trace.len() <= skip {
            return Err(Error::Fault);
        }
        // At most `value_frames`: the trace was cut to `value_frames + skip`.
        let ips = trace.get(skip..).unwrap_or(&[]);
        self.stackid_ips(cpu, ips, flags, resolver)
    }

    /// `__bpf_get_stackid` from the hash on: `ips` (at most `value_frames`,
    /// possibly none) is the stack.
    fn stackid_ips<R: VmaResolver + ?Sized>(
        &self,
        cpu: usize,
        ips: &[u64],
        flags: u64,
        resolver: Option<&R>,
    ) -> Result<u32, Error> {
        let hash = trace_hash(ips);
        let id = hash & (self.geo.n_buckets - 1);
        let bucket = self.bucket(id).ok_or(Error::Fault)?;
        let nr = ips.len() as u32;
        let fast = flags & BPF_F_FAST_STACK_CMP != 0;
        let reuse = flags & BPF_F_REUSE_STACKID != 0;

        if self.geo.build_id() {
            if fast {
                let seen = self.observe(bucket, |e| e.word(HASH) == hash);
                if let Seen::Slot(_, true) = seen {
                    return Ok(id);
                }
            }
            // The kernel pops before comparing build-id stacks (a full map
            // gives ENOMEM even for a known stack); so do we.
            let (slot, new) = self.take_slot(cpu)?;
            let user = flags & BPF_F_USER_STACK != 0;
            self.write(new, hash, nr, |data| {
                write_build_ids(data, ips, user, resolver)
            });
            let frame_words = nr as usize * (size_of::<StackBuildId>() / 4);
            loop {
                let seen = self.observe(bucket, |e| {
                    if e.word(HASH) == hash && e.word(NR) == nr && e.eq_words(&new, frame_words) {
                        Cmp::Same
                    } else {
                        Cmp::Other
                    }
                });
                let expect = match decide(seen, reuse) {
                    Ok(expect) => expect,
                    Err(hit_or_exist) => {
                        self.freelist.push(cpu, slot);
                        return hit_or_exist.map(|()| id);
                    }
                };
                if self.publish(cpu, bucket, expect, slot, reuse) {
                    return Ok(id);
                }
            }
        }

        loop {
            let seen = self.observe(bucket, |e| {
                if e.word(HASH) != hash {
                    Cmp::Other
                } else if fast || (e.word(NR) == nr && e.eq_ips(ips)) {
                    Cmp::Same
                } else {
                    Cmp::Other
                }
            });
            let expect = match decide(seen, reuse) {
                Ok(expect) => expect,
                Err(hit_or_exist) => return hit_or_exist.map(|()| id),
            };
            let (slot, new) = self.take_slot(cpu)?;
            self.write(new, hash, nr, |data| {
                for (w, &ip) in data.chunks_exact(2).zip(ips) {
                    let [lo, hi] = ip_words(ip);
                    // Relaxed: inside the slot's write section (see `write`).
                    w[0].store(lo, Ordering::Relaxed);
                    w[1].store(hi, Ordering::Relaxed);
                }
            });
            if self.publish(cpu, bucket, expect, slot, reuse) {
                return Ok(id);
            }
            // Someone else changed the bucket first: give the slot back
            // and decide again on what is there now.
            self.freelist.push(cpu, slot);
        }
    }

    /// Pops a free slot for writing: `NoMem` when every element is in use.
    fn take_slot(&self, cpu: usize) -> Result<(u32, Elem<'a>), Error> {
        let slot = self.freelist.pop(cpu).ok_or(Error::NoMem)?;
        match self.elem(slot) {
            Some(e) => Ok((slot, e)),
            // Unreachable: the freelist only holds indices < max_entries.
            None => {
                self.freelist.push(cpu, slot);
                Err(Error::Fault)
            }
        }
    }

    /// Publishes `slot` in `bucket`. With `reuse`, one swap (the kernel's
    /// `xchg`); without, a compare-exchange from `expect` (the value the
    /// caller decided on). The displaced slot goes back to the freelist.
    /// Returns false (slot still ours) if the compare-exchange lost.
    fn publish(&self, cpu: usize, bucket: &AtomicU32, expect: u32, slot: u32, reuse: bool) -> bool {
        let new = slot + 1;
        let old = if reuse {
            // AcqRel: Release publishes the slot's words to readers'
            // Acquire bucket loads; Acquire orders our later push of the
            // old slot after its previous publisher's writes.
            bucket.swap(new, Ordering::AcqRel)
        } else {
            // AcqRel / Acquire: as for the swap above.
            match bucket.compare_exchange(expect, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(old) => old,
                Err(_) => return false,
            }
        };
        if let Some(old) = old.checked_sub(1) {
            self.freelist.push(cpu, old);
        }
        true
    }

    /// Checks the map-fd permission the kernel checks before the map's code.
    fn may(&self, read: bool, write: bool) -> Result<(), Error> {
        let f = self.geo.attr.map_flags;
        if (read && f & BPF_F_WRONLY != 0) || (write && f & BPF_F_RDONLY != 0) {
            return Err(Error::Perm);
        }
        Ok(())
    }

    /// Copies slot `e`'s frames into `value` and zeroes the tail.
    /// Copies slot `e`'s frames into `value`, zeroes the tail, and returns
    /// the number of frames.
    fn copy_out(&self, e: Elem<'_>, value: &mut [u8]) -> usize {
        let nr = (e.word(NR) as usize).min(self.geo.value_frames as usize);
        let len = nr * self.geo.frame_size as usize;
        let (head, tail) = value.split_at_mut(len.min(value.len()));
        // len is a multiple of 8 (frame sizes are), so no remainder.
        for (chunk, w) in head.chunks_exact_mut(4).zip(e.data()) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
        tail.fill(0);
        nr
    }

    fn value_buf<'v>(&self, value: &'v mut [u8]) -> Result<&'v mut [u8], Error> {
        value
            .get_mut(..self.geo.attr.value_size as usize)
            .ok_or(Error::Inval)
    }

    /// `BPF_MAP_LOOKUP_ELEM`: copies stack `id` into `value` (its first
    /// `value_size` bytes; a shorter buffer is `Inval`), zeroing the part
    /// past the stack's frames. `NoEnt` for an empty bucket or an id
    /// `>= n_buckets`; `Perm` on a `BPF_F_WRONLY` map.
    ///
    /// The read is optimistic: it never takes the stack out of its bucket
    /// (the kernel's copy does, and can make a concurrent insert vanish),
    /// and retries only if a writer changed the bucket meanwhile.
    pub fn lookup(&self, id: u32, value: &mut [u8]) -> Result<(), Error> {
        self.lookup_frames(id, value).map(drop)
    }

    /// [`lookup`](StackMapIn::lookup) that returns the number of frames.
    fn lookup_frames(&self, id: u32, value: &mut [u8]) -> Result<usize, Error> {
        self.may(true, false)?;
        let bucket = self.bucket(id).ok_or(Error::NoEnt)?;
        let value = self.value_buf(value)?;
        match self.observe(bucket, |e| self.copy_out(e, value)) {
            Seen::Empty => Err(Error::NoEnt),
            Seen::Slot(_, nr) => Ok(nr),
        }
    }

    /// [`lookup`](StackMapIn::lookup) into a typed buffer of an ips map,
    /// with no intermediate copy: the value lands in `out` (at least
    /// `value_size / 8` long, else `Inval`) and the stack's frames are
    /// returned as a slice of it. `Inval` on a build-id map.
    pub fn lookup_ips<'v>(&self, id: u32, out: &'v mut [u64]) -> Result<&'v [u64], Error> {
        if self.geo.build_id() {
            return Err(Error::Inval);
        }
        let nr = self.lookup_frames(id, zerocopy::IntoBytes::as_mut_bytes(&mut *out))?;
        Ok(out.get(..nr).unwrap_or(&[]))
    }

    /// [`lookup`](StackMapIn::lookup) into typed [`StackBuildId`] frames of
    /// a build-id map, with no intermediate copy; returns the stack's
    /// frames. `Inval` on an ips map or when `out` is shorter than
    /// `value_size / 32`.
    pub fn lookup_build_ids<'v>(
        &self,
        id: u32,
        out: &'v mut [StackBuildId],
    ) -> Result<&'v [StackBuildId], Error> {
        if !self.geo.build_id() {
            return Err(Error::Inval);
        }
        let nr = self.lookup_frames(id, zerocopy::IntoBytes::as_mut_bytes(&mut *out))?;
        Ok(out.get(..nr).unwrap_or(&[]))
    }

    /// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (Linux 6.18+): copies stack `id`
    /// out, as [`lookup`](StackMapIn::lookup), and removes it. Needs read
    /// and write rights (`Perm` on RDONLY or WRONLY maps).
    pub fn lookup_and_delete(&self, id: u32, value: &mut [u8]) -> Result<(), Error> {
        self.may(true, true)?;
        let bucket = self.bucket(id).ok_or(Error::NoEnt)?;
        let value = self.value_buf(value)?;
        // AcqRel: Acquire sees the slot's words (pairs with its publish);
        // Release orders this removal before our push of the slot.
        let old = bucket.swap(0, Ordering::AcqRel);
        let slot = old.checked_sub(1).ok_or(Error::NoEnt)?;
        // The slot is ours now: no writer can touch it until we push it.
        if let Some(e) = self.elem(slot) {
            self.copy_out(e, value);
        }
        self.freelist.push(0, slot);
        Ok(())
    }

    /// `BPF_MAP_DELETE_ELEM`: removes stack `id`. `TooBig` for an id
    /// `>= n_buckets`, `NoEnt` for an empty bucket, `Perm` on RDONLY maps.
    pub fn delete(&self, id: u32) -> Result<(), Error> {
        self.may(false, true)?;
        let bucket = self.bucket(id).ok_or(Error::TooBig)?;
        // AcqRel: as in `lookup_and_delete`.
        let old = bucket.swap(0, Ordering::AcqRel);
        let slot = old.checked_sub(1).ok_or(Error::NoEnt)?;
        self.freelist.push(0, slot);
        Ok(())
    }

    /// `BPF_MAP_GET_NEXT_KEY`: the first occupied id after `key`. No key,
    /// an id out of range, or an id whose bucket is empty restarts from 0,
    /// as in the kernel. `NoEnt` when there is none; `Perm` on WRONLY maps.
    pub fn get_next_key(&self, key: Option<u32>) -> Result<u32, Error> {
        self.may(true, false)?;
        // Relaxed (all loads here): only emptiness is read, nothing behind
        // the slot index, and a racing change may be seen either way.
        let occupied = |id: u32| {
            self.bucket(id)
                .is_some_and(|b| b.load(Ordering::Relaxed) != 0)
        };
        let start = match key {
            Some(k) if occupied(k) => k + 1,
            _ => 0,
        };
        (start..self.geo.n_buckets)
            .find(|&id| occupied(id))
            .ok_or(Error::NoEnt)
    }

    /// `BPF_MAP_UPDATE_ELEM`: stack maps can't be written from the syscall
    /// side: `Inval` (`Perm` first on RDONLY maps, as the kernel checks).
    pub fn update(&self, id: u32, value: &[u8], flags: u64) -> Result<(), Error> {
        self.may(false, true)?;
        let _ = (id, value, flags);
        Err(Error::Inval)
    }

    /// Checks conservation: every slot is in exactly one bucket or on the
    /// freelist, none twice, none lost. `&mut self` makes it race-free (no
    /// thread is holding a slot). Returns `(slots in buckets, slots free)`.
    ///
    /// It drains the freelist and pushes the slots back spread over the
    /// CPUs, so the map behaves the same afterwards. Allocates a counter
    /// per slot: a test and debugging aid, not for the hot path.
    #[cfg(feature = "alloc")]
    pub fn audit(&mut self) -> Result<(usize, usize), AuditError> {
        let n = self.geo.attr.max_entries as usize;
        let mut count = alloc::vec![0u8; n];
        let mut free = alloc::vec::Vec::with_capacity(n);
        while let Some(slot) = self.freelist.pop(0) {
            free.push(slot);
        }
        let mut in_buckets = 0;
        let from_buckets = self
            .buckets
            .iter()
            // Relaxed: `&mut self` excludes every other thread.
            .filter_map(|b| b.load(Ordering::Relaxed).checked_sub(1))
            .inspect(|_| in_buckets += 1);
        let mut bad = None;
        for slot in free.iter().copied().chain(from_buckets) {
            match count.get_mut(slot as usize) {
                Some(c) if *c == 0 => *c = 1,
                Some(_) => bad = bad.or(Some(AuditError::Twice(slot))),
                None => bad = bad.or(Some(AuditError::OutOfRange(slot))),
            }
        }
        let nr_cpus = self.geo.nr_cpus;
        for (i, &slot) in free.iter().enumerate() {
            self.freelist.push(i % nr_cpus, slot);
        }
        if let Some(e) = bad {
            return Err(e);
        }
        match count.iter().position(|&c| c == 0) {
            Some(lost) => Err(AuditError::Lost(lost as u32)),
            None => Ok((in_buckets, free.len())),
        }
    }
}

/// What [`StackMapIn::audit`] found wrong: a broken conservation invariant.
#[cfg(feature = "alloc")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditError {
    /// This slot is in two places (two buckets, a bucket and the freelist,
    /// or twice on the freelist).
    Twice(u32),
    /// This slot is nowhere.
    Lost(u32),
    /// A bucket or the freelist holds an index `>= max_entries`.
    OutOfRange(u32),
}

/// Stores `ips` as build-id frames into a slot's data words.
fn write_build_ids<R: VmaResolver + ?Sized>(
    data: &[AtomicU32],
    ips: &[u64],
    user: bool,
    resolver: Option<&R>,
) {
    let words = size_of::<StackBuildId>() / 4;
    resolve_frames(ips, user, resolver, |i, frame| {
        let bytes = zerocopy::IntoBytes::as_bytes(frame);
        let at = i * words;
        if let Some(dst) = data.get(at..at + words) {
            for (w, c) in dst.iter().zip(bytes.chunks_exact(4)) {
                // Relaxed: inside the slot's write section (see `write`).
                w.store(
                    u32::from_ne_bytes([c[0], c[1], c[2], c[3]]),
                    Ordering::Relaxed,
                );
            }
        }
    });
}

impl Drop for StackMapIn<'_> {
    fn drop(&mut self) {
        // SAFETY: the region is not used after this; drop runs once.
        unsafe { self.region.drop_in_place() };
        #[cfg(feature = "alloc")]
        if let Some((base, block)) = self.owned.take() {
            // SAFETY: `base` came from `alloc(block)` in `with_config`, and
            // the region's borrows of it end with this drop.
            unsafe { alloc::alloc::dealloc(base.as_ptr(), block) };
        }
    }
}

impl core::fmt::Debug for StackMapIn<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StackMap")
            .field("attr", &self.geo.attr)
            .field("nr_cpus", &self.geo.nr_cpus)
            .field("max_stack", &self.geo.max_stack)
            .field("n_buckets", &self.geo.n_buckets)
            .finish_non_exhaustive()
    }
}

// A map is shared between threads (and CPUs) by reference: it must stay
// Send + Sync whatever its fields become.
static_assertions::assert_impl_all!(StackMapIn<'static>: Send, Sync);

//! `StackDepot`: a lock-free stack store that never drops a stack.
//!
//! The kernel's stack map keeps one stack per hash bucket, so a second
//! stack that hashes there is refused or replaces the first. The depot
//! keeps every distinct stack until it is full, names it by an id that
//! never changes (and is never reused until [`clear`](StackDepotIn::clear)),
//! and stores its frames at their exact length. Linux has the idea in
//! `lib/stackdepot.c` (KASAN, page_owner); its insert takes a spinlock,
//! this one does not.
//!
//! Parts, one file each:
//!
//! - `index`: the lock-free probe/insert protocol (open addressing over
//!   `AtomicU32` words, publish by one CAS) and the id directory; its
//!   header states the invariants.
//! - `arena`: the bump allocator of records, the id allocator and the
//!   per-CPU counters.
//! - `layout`: the checked geometry and the block's layout.
//! - the hash: `hash::stack`, keyed by [`DepotConfig::seed`].
//!
//! # Guarantees
//!
//! - Same frames (and kind) → same id; different frames → different ids,
//!   always: a hit is a full compare of the stored record, never a hash.
//! - Ids are `< capacity` and name the same frames for the depot's life.
//! - [`intern`](StackDepotIn::intern) is lock-free, never allocates,
//!   blocks or panics; [`get`](StackDepotIn::get) is wait-free and hands
//!   out the stored words without copying.
//! - Full (no id, no arena words, or a probe run at its bound): `NoMem`
//!   and nothing changed (with concurrent interns, see
//!   [`DepotStats::wasted_words`]); stacks already in the depot are still
//!   found.

mod arena;
mod index;
mod layout;
#[cfg(all(test, feature = "std"))]
mod tests;

use core::marker::PhantomData;
use core::mem::{size_of, MaybeUninit};

use crossbeam_utils::CachePadded;
use zerocopy::{FromBytes, IntoBytes};

use crate::hash::stack::StackHasher;
use crate::sync::{AtomicU32, Ordering};
use crate::uapi::StackBuildId;
use crate::Error;
use arena::{Arena, CpuStats, Cursors, KIND_BUILD_IDS, KIND_IPS};
use layout::{init_slice, Geometry, Layout};

pub use layout::{MAX_ARENA_WORDS, MAX_CAPACITY, PROBE_MAX};

/// How big a depot is and how it hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DepotConfig {
    /// The most distinct stacks; ids are `< capacity`. 1 ..= [`MAX_CAPACITY`].
    pub capacity: u32,
    /// `u64` words for the records: each stack takes one header word plus
    /// one word per frame (four per [`StackBuildId`] frame).
    /// 2 ..= [`MAX_ARENA_WORDS`].
    pub arena_words: usize,
    /// Shards for what is kept per CPU (the counters): at least 1.
    pub nr_cpus: usize,
    /// Keys the hash, so that crafted stacks can't pile into one probe run:
    /// pass a random value when stacks come from an untrusted source.
    pub seed: u64,
}

impl Default for DepotConfig {
    /// 16,384 stacks, 16 words a stack on average (a real profile's mean
    /// depth is about 9), one CPU, a fixed seed.
    fn default() -> Self {
        DepotConfig {
            capacity: 16_384,
            arena_words: 16_384 * 16,
            nr_cpus: 1,
            seed: 0x6b73_746b_6465_706f,
        }
    }
}

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StackKind {
    /// Instruction pointers, one word each ([`StackDepotIn::intern`]).
    Ips,
    /// [`StackBuildId`] frames, four words each
    /// ([`StackDepotIn::intern_build_ids`]).
    BuildIds,
}

/// Counters of a depot, summed over CPUs.
///
/// With no intern in flight, `words_used == record_words + wasted_words`
/// and `ids_used == stacks + wasted_ids`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DepotStats {
    /// Stacks stored ([`StackDepotIn::len`]).
    pub stacks: usize,
    /// Ids taken: stored, wasted, or reserved by an intern in flight.
    pub ids_used: u32,
    /// Arena words taken: records, wasted, or reserved by an intern in flight.
    pub words_used: usize,
    /// Arena words of the stored records, headers included.
    pub record_words: usize,
    /// Interns that wrote a record, then found the same stack published by
    /// another thread first and returned its id.
    pub lost_races: usize,
    /// Ids that such a loser (or an intern that found the arena or index
    /// full) could not give back because another thread had taken a later
    /// one: unused until [`clear`](StackDepotIn::clear).
    pub wasted_ids: usize,
    /// Arena words that could not be given back, likewise.
    pub wasted_words: usize,
    /// Interns refused with `NoMem` because the probe run reached
    /// [`PROBE_MAX`] slots (practically never: the index is at most half
    /// full and the hash keyed).
    pub probe_limit: usize,
}

/// A stack depot over memory that lives for `'a`.
///
/// [`StackDepot`] (= `StackDepotIn<'static>`) is the one most code uses;
/// a shorter `'a` comes from [`StackDepotIn::new_in`] over borrowed memory.
/// All methods but [`clear`](StackDepotIn::clear) take `&self` and may be
/// called from any number of threads at once.
///
/// ```
/// use kstackmap::{DepotConfig, StackDepot};
///
/// let depot = StackDepot::new(&DepotConfig::default()).unwrap();
/// let a = depot.intern(0, &[0x1000, 0x2000]).unwrap();
/// let b = depot.intern(0, &[0x1000, 0x2004]).unwrap();
/// assert_ne!(a, b);
/// assert_eq!(depot.intern(0, &[0x1000, 0x2000]), Ok(a));
/// assert_eq!(depot.get(a), Some(&[0x1000, 0x2000][..]));
/// assert_eq!(depot.len(), 2);
/// ```
///
/// # Invariants
///
/// The slices and the arena were initialised by `init` over one block that
/// stays valid and unaliased for `'a` (or until `Drop`, when `owned` is
/// set); `raw` holds the block's own pointers to the atomics for `Drop`.
pub struct StackDepotIn<'a> {
    geo: Geometry,
    hasher: StackHasher,
    cursors: &'a CachePadded<Cursors>,
    stats: &'a [CachePadded<CpuStats>],
    index: &'a [AtomicU32],
    dir: &'a [AtomicU32],
    arena: Arena<'a>,
    size: usize,
    raw: Raw,
    /// The block to free on drop, when the depot allocated it.
    #[cfg(feature = "alloc")]
    owned: Option<(core::ptr::NonNull<u8>, core::alloc::Layout)>,
    /// Test hook: every stack hashes to 0 (one probe run, one tag).
    #[cfg(any(test, loom))]
    collide: bool,
    _borrow: PhantomData<&'a mut [u8]>,
}

/// A stack depot that owns its memory or borrows it for `'static`.
pub type StackDepot = StackDepotIn<'static>;

/// The block's own pointers to its atomics, for `drop_in_place`.
struct Raw {
    cursors: *mut CachePadded<Cursors>,
    stats: *mut [CachePadded<CpuStats>],
    words: [*mut [AtomicU32]; 2],
}

// SAFETY: shared state is atomics, or arena words that are written only by
// the one thread that reserved them before they are published, and never
// after (see `index`); raw pointers are used only by `Drop` (`&mut self`).
unsafe impl Send for StackDepotIn<'_> {}
// SAFETY: as above; every `&self` method follows the protocol in `index`.
unsafe impl Sync for StackDepotIn<'_> {}

impl StackDepotIn<'static> {
    /// Creates a depot, allocating its memory (fallibly).
    ///
    /// # Errors
    ///
    /// `Inval` for a bad config (capacity 0 or above [`MAX_CAPACITY`], an
    /// arena of fewer than 2 words or more than [`MAX_ARENA_WORDS`],
    /// `nr_cpus` 0); `NoMem` when the allocation fails.
    #[cfg(feature = "alloc")]
    #[cfg_attr(docsrs, doc(cfg(feature = "alloc")))]
    pub fn new(cfg: &DepotConfig) -> Result<StackDepot, Error> {
        let geo = Geometry::new(cfg)?;
        let layout = Layout::new(&geo)?;
        let block = core::alloc::Layout::from_size_align(layout.size, Layout::ALIGN)
            .map_err(|_| Error::NoMem)?;
        // SAFETY: `block` has a non-zero size (it holds the cursors' line).
        let base = unsafe { alloc::alloc::alloc(block) };
        let base = core::ptr::NonNull::new(base).ok_or(Error::NoMem)?;
        // SAFETY: fresh allocation of `layout.size` bytes aligned to ALIGN,
        // owned by the depot until `Drop` frees it.
        let mut depot = unsafe { Self::init(base.as_ptr(), cfg, geo, &layout) };
        depot.owned = Some((base, block));
        Ok(depot)
    }
}

impl<'a> StackDepotIn<'a> {
    /// Bytes of memory [`new_in`](StackDepotIn::new_in) needs for `cfg`,
    /// alignment slack included.
    ///
    /// # Errors
    ///
    /// As `StackDepot::new`: `Inval` for a bad config, `NoMem` when the
    /// size does not fit the address space.
    pub fn storage_size(cfg: &DepotConfig) -> Result<usize, Error> {
        Ok(Layout::new(&Geometry::new(cfg)?)?.storage_size())
    }

    /// Creates a depot in caller-provided memory, with no allocator: a
    /// kernel module's arena or a [`StaticStorage`](crate::StaticStorage).
    /// `mem` may have any alignment.
    ///
    /// # Errors
    ///
    /// `Inval` for a bad config (as `StackDepot::new`); `NoMem` when
    /// `mem` is shorter than [`storage_size`](StackDepotIn::storage_size).
    pub fn new_in(cfg: &DepotConfig, mem: &'a mut [MaybeUninit<u8>]) -> Result<Self, Error> {
        let geo = Geometry::new(cfg)?;
        let layout = Layout::new(&geo)?;
        let start = mem.as_mut_ptr().cast::<u8>();
        let pad = start.align_offset(Layout::ALIGN);
        if pad == usize::MAX || mem.len() < pad || mem.len() - pad < layout.size {
            return Err(Error::NoMem);
        }
        // SAFETY: `pad + layout.size <= mem.len()`, so the aligned block is
        // inside `mem`, which we borrow mutably (exclusively) for 'a.
        Ok(unsafe { Self::init(start.add(pad), cfg, geo, &layout) })
    }

    /// Writes the block's atomics in place and builds the depot.
    ///
    /// # Safety
    ///
    /// `base` is aligned to [`Layout::ALIGN`], valid for reads and writes
    /// of `layout.size` bytes for `'a`, and reached by nothing else.
    unsafe fn init(base: *mut u8, cfg: &DepotConfig, geo: Geometry, layout: &Layout) -> Self {
        let zero = || AtomicU32::new(0);
        // SAFETY: `layout` places each part inside the block, aligned for
        // its type: the cursors at offset 0 of an ALIGN-aligned base, the
        // stats right after (a multiple of the padded line), the u32 words
        // after them, the arena at a multiple of 8. The block is ours.
        let (cursors, stats, index, dir) = unsafe {
            let cursors = base.cast::<CachePadded<Cursors>>();
            cursors.write(CachePadded::new(Cursors::new()));
            (
                cursors,
                init_slice(base.add(layout.stats), geo.nr_cpus, || {
                    CachePadded::new(CpuStats::new())
                }),
                init_slice(base.add(layout.index), geo.n_slots as usize, zero),
                init_slice(base.add(layout.dir), geo.capacity as usize, zero),
            )
        };
        // SAFETY: `layout.arena` is 8-aligned and `arena_words` words fit
        // before `layout.size`; those bytes are ours and nothing else in the
        // depot points into them.
        let arena = unsafe { Arena::new(base.add(layout.arena).cast::<u64>(), geo.arena_words) };
        // SAFETY: each pointer covers initialised values in the block we
        // hold for 'a; from now on they are only reached through these
        // shared references (atomics: interior mutability), until `Drop`.
        let (c, s, i, d) = unsafe { (&*cursors, &*stats, &*index, &*dir) };
        // INVARIANT: everything comes from the one block, initialised above.
        StackDepotIn {
            geo,
            hasher: StackHasher::new(cfg.seed),
            cursors: c,
            stats: s,
            index: i,
            dir: d,
            arena,
            size: layout.size,
            raw: Raw {
                cursors,
                stats,
                words: [index, dir],
            },
            #[cfg(feature = "alloc")]
            owned: None,
            #[cfg(any(test, loom))]
            collide: false,
            _borrow: PhantomData,
        }
    }

    /// Test hook (loom models and unit tests only): from now on every stack
    /// hashes to 0, so all stacks share one probe run and one tag, and only
    /// the full compare tells them apart.
    #[cfg(any(test, loom))]
    #[doc(hidden)]
    pub fn force_hash_collisions(&mut self) {
        self.collide = true;
    }

    /// The id of the stack `frames` (instruction pointers, innermost
    /// first), storing it if it is new.
    ///
    /// `cpu` picks the counters' shard (`cpu % nr_cpus`). The same frames
    /// always get the same id, different frames different ids. Lock-free:
    /// never allocates, blocks, or panics, and never waits for another
    /// thread's half-written record.
    ///
    /// ```
    /// use kstackmap::{DepotConfig, Error, StackDepot};
    ///
    /// # fn main() -> Result<(), Error> {
    /// let cfg = DepotConfig { capacity: 1024, arena_words: 1024 * 16, ..DepotConfig::default() };
    /// let depot = StackDepot::new(&cfg)?;
    /// let id = depot.intern(0, &[0x4011d6, 0x401234, 0x7f00_1234_5678])?;
    /// // Same frames, from any CPU: the same id. Other frames: another id,
    /// // whatever their hash (a depot never merges or drops a stack).
    /// assert_eq!(depot.intern(1, &[0x4011d6, 0x401234, 0x7f00_1234_5678])?, id);
    /// assert_ne!(depot.intern(0, &[0x4011d6, 0x401234])?, id);
    /// assert_eq!(depot.intern(0, &[]), Err(Error::Inval));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// `Inval` for empty frames. `NoMem` when the stack is new and the
    /// depot is full: every id taken, too few arena words left for its
    /// record, or its probe run at [`PROBE_MAX`] slots. Nothing changes
    /// then, and stacks already stored are still found.
    #[inline]
    pub fn intern(&self, cpu: usize, frames: &[u64]) -> Result<u32, Error> {
        self.intern_words(cpu, KIND_IPS, frames)
    }

    /// [`intern`](StackDepotIn::intern) for build-id stacks: the frames are
    /// read in place as words (four a frame, no copy before the store).
    /// A build-id stack and an ips stack with the same words are different
    /// stacks with different ids.
    ///
    /// # Errors
    ///
    /// As [`intern`](StackDepotIn::intern).
    #[inline]
    pub fn intern_build_ids(&self, cpu: usize, frames: &[StackBuildId]) -> Result<u32, Error> {
        match <[u64]>::ref_from_bytes(frames.as_bytes()) {
            Ok(words) => self.intern_words(cpu, KIND_BUILD_IDS, words),
            // Never: a `StackBuildId` is 32 bytes with the alignment of u64.
            Err(_) => Err(Error::Inval),
        }
    }

    /// The words stored under `id`, borrowed from the depot (no copy):
    /// the frames of an ips stack, or the raw words of a build-id stack
    /// (see [`get_build_ids`](StackDepotIn::get_build_ids)). `None` for an
    /// id that names no stack. Wait-free.
    ///
    /// The slice stays valid and unchanged for as long as the depot is
    /// borrowed: a stored stack is never moved, rewritten or dropped (until
    /// [`clear`](StackDepotIn::clear), which needs `&mut`).
    ///
    /// ```
    /// use kstackmap::{DepotConfig, StackDepot};
    ///
    /// # fn main() -> Result<(), kstackmap::Error> {
    /// let depot = StackDepot::new(&DepotConfig { capacity: 64, arena_words: 1024, ..DepotConfig::default() })?;
    /// let id = depot.intern(0, &[0x10, 0x20, 0x30])?;
    /// let frames: &[u64] = depot.get(id).unwrap(); // zero-copy
    /// assert_eq!(frames, [0x10, 0x20, 0x30]);
    /// assert_eq!(depot.get(id + 1), None);
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn get(&self, id: u32) -> Option<&[u64]> {
        self.record(id).map(|(_, words)| words)
    }

    /// The frames of the build-id stack under `id`, borrowed from the
    /// depot (no copy). `None` if `id` names no stack or an ips stack.
    #[inline]
    pub fn get_build_ids(&self, id: u32) -> Option<&[StackBuildId]> {
        match self.record(id)? {
            (StackKind::BuildIds, words) => <[StackBuildId]>::ref_from_bytes(words.as_bytes()).ok(),
            (StackKind::Ips, _) => None,
        }
    }

    /// The kind of the stack under `id`, if any.
    #[inline]
    pub fn kind(&self, id: u32) -> Option<StackKind> {
        self.record(id).map(|(kind, _)| kind)
    }

    /// Number of stacks stored.
    #[inline]
    pub fn len(&self) -> usize {
        self.stats().stacks
    }

    /// Whether no stack is stored.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most stacks the depot can hold (ids are below it).
    #[inline]
    pub fn capacity(&self) -> u32 {
        self.geo.capacity
    }

    /// Words in the arena.
    #[inline]
    pub fn arena_words(&self) -> usize {
        self.geo.arena_words
    }

    /// Every stored stack with its id, in id order: the words as
    /// [`get`](StackDepotIn::get) returns them. Stacks stored while the
    /// iterator runs may or may not be seen.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &[u64])> + '_ {
        // Acquire: pairs with the cursor's AcqRel taking of ids; not needed
        // for correctness (each id is checked by `get`), only to bound the walk.
        let end = self.cursors.ids.load(Ordering::Acquire);
        (0..end).filter_map(move |id| self.get(id).map(|w| (id, w)))
    }

    /// Bytes of memory the depot uses: its own struct and its block
    /// (cursors, counters, index, directory, arena), allocated or not
    /// yet touched.
    pub fn mem_usage(&self) -> usize {
        size_of::<Self>() + self.size
    }

    /// The counters, summed over CPUs (a snapshot, not atomic as a whole).
    pub fn stats(&self) -> DepotStats {
        let mut s = DepotStats {
            // Relaxed (both): counters, read for reporting only.
            ids_used: self.cursors.ids.load(Ordering::Relaxed),
            words_used: self.cursors.words.load(Ordering::Relaxed) as usize,
            ..DepotStats::default()
        };
        // Relaxed (all): event counts, read for reporting only.
        let get = |c: &crate::sync::AtomicUsize| c.load(Ordering::Relaxed);
        for c in self.stats {
            s.stacks = s.stacks.wrapping_add(get(&c.published));
            s.record_words = s.record_words.wrapping_add(get(&c.record_words));
            s.lost_races = s.lost_races.wrapping_add(get(&c.lost_races));
            s.wasted_ids = s.wasted_ids.wrapping_add(get(&c.wasted_ids));
            s.wasted_words = s.wasted_words.wrapping_add(get(&c.wasted_words));
            s.probe_limit = s.probe_limit.wrapping_add(get(&c.probe_limit));
        }
        s
    }

    /// Forgets every stack: ids start again from 0 and may name other
    /// stacks afterwards. Takes `&mut self`, so no stack borrowed from the
    /// depot is alive.
    pub fn clear(&mut self) {
        // Relaxed (all): `&mut self` means no other thread uses the depot;
        // whatever hands it on afterwards orders these stores.
        let zero = |a: &AtomicU32| a.store(0, Ordering::Relaxed);
        zero(&self.cursors.ids);
        zero(&self.cursors.words);
        self.index.iter().for_each(zero);
        self.dir.iter().for_each(zero);
        for c in self.stats {
            for a in [
                &c.published,
                &c.record_words,
                &c.lost_races,
                &c.wasted_ids,
                &c.wasted_words,
                &c.probe_limit,
            ] {
                a.store(0, Ordering::Relaxed);
            }
        }
    }

    /// The shard of the counters for `cpu`.
    #[inline]
    fn cpu_stats(&self, cpu: usize) -> Option<&CpuStats> {
        self.stats
            .get(cpu.checked_rem(self.stats.len())?)
            .map(|c| &**c)
    }
}

impl core::fmt::Debug for StackDepotIn<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StackDepot")
            .field("capacity", &self.geo.capacity)
            .field("arena_words", &self.geo.arena_words)
            .field("nr_cpus", &self.geo.nr_cpus)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Drop for StackDepotIn<'_> {
    fn drop(&mut self) {
        // SAFETY: the pointers come from `init` over the block, each value
        // initialised there and dropped once, here; the shared references
        // to them die with `self`. (Only loom's atomics have destructors.)
        unsafe {
            if core::mem::needs_drop::<Cursors>() {
                core::ptr::drop_in_place(self.raw.cursors);
                core::ptr::drop_in_place(self.raw.stats);
            }
            if core::mem::needs_drop::<AtomicU32>() {
                for w in self.raw.words {
                    core::ptr::drop_in_place(w);
                }
            }
        }
        #[cfg(feature = "alloc")]
        if let Some((base, block)) = self.owned.take() {
            // SAFETY: allocated in `new` with this layout, freed once.
            unsafe { alloc::alloc::dealloc(base.as_ptr(), block) };
        }
    }
}

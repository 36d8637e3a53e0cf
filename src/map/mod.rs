//! The kernel-exact stack trace map ([`StackMap`]): `bpf_get_stackid` and
//! the syscall side, with the kernel's ids and errnos.
//!
//! - `protocol.rs`: the concurrency protocol (elements under a per-slot
//!   sequence number, optimistic reads, publish by `swap` or
//!   `compare_exchange`) with its invariants; the loom models in
//!   `loom-tests/tests/map.rs` check it.
//! - `elem.rs`: one element's layout (16-byte header with the freelist
//!   link, data in 64-bit words where the target has them).
//! - `cache.rs`: the hit cache, a verified shortcut past `jhash2`, with its
//!   protocol and invariants (loom models in the same file as the map's).
//! - `stackid.rs`: `get_stackid` and its variants (the kernel's walk, skip,
//!   truncation, build ids, `_pe`).
//! - `syscall.rs`: lookup, delete, get_next_key, update.
//! - `iter.rs`: [`StackMapIn::iter`], every stored stack without allocating.
//! - `attr.rs`: creation checks (`BPF_MAP_CREATE`'s errnos).
//! - `audit.rs`: the conservation check.
//! - `versioned.rs`: versioned ids ([`StackRef`]): stale-id detection.

mod attr;
#[cfg(feature = "alloc")]
mod audit;
mod cache;
#[cfg(all(test, feature = "std"))]
mod cache_tests;
mod elem;
mod iter;
mod protocol;
mod stackid;
mod syscall;
#[cfg(all(test, feature = "std"))]
mod tests;
mod versioned;

pub(crate) use attr::Geometry;
pub use attr::{Config, MapAttr};
#[cfg(feature = "alloc")]
pub use audit::AuditError;
pub(crate) use elem::HDR_WORDS;
pub use iter::{Frames, Iter};
pub use versioned::StackRef;

use core::marker::PhantomData;
use core::mem::MaybeUninit;

use crate::freelist::FreeList;
use crate::storage::{Layout, Region};
use crate::sync::AtomicU32;
use crate::Error;
use cache::Cache;
use elem::Elems;

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
    elems: Elems<'a>,
    /// Free slots; their links live in the elements' headers.
    freelist: FreeList<'a, Elems<'a>>,
    buckets: &'a [AtomicU32],
    cache: Cache<'a>,
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

impl StackMapIn<'static> {
    /// Creates an ips map for `entries` stacks of up to `max_frames` frames
    /// each: the common case.
    ///
    /// It picks `MapAttr { max_entries: entries, key_size: 4, value_size:
    /// max_frames * 8, map_flags: 0, numa_node: 0 }` (no build ids, no
    /// access restriction) and [`Config::default`]: one freelist shard, the
    /// default `perf_event_max_stack` of 127. For more shards (many CPUs
    /// inserting at once), build ids or flags, use
    /// [`with_config`](StackMapIn::with_config).
    ///
    /// ```
    /// # fn main() -> Result<(), kstackmap::Error> {
    /// let map = kstackmap::StackMap::with_capacity(4096, 64)?;
    /// assert_eq!(map.attr().value_size, 64 * 8);
    /// assert_eq!(map.n_buckets(), 4096);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// - `Inval`: `entries` or `max_frames` is 0, or `max_frames > 127`.
    /// - `TooBig`: `entries > 2^31`, or more than this target's freelist
    ///   can index ([`HEAD_INDEX_MAX`](crate::HEAD_INDEX_MAX)).
    /// - `NoMem`: the allocation failed.
    #[cfg(feature = "alloc")]
    #[cfg_attr(docsrs, doc(cfg(feature = "alloc")))]
    pub fn with_capacity(entries: u32, max_frames: u32) -> Result<StackMap, Error> {
        let attr = MapAttr {
            max_entries: entries,
            key_size: 4,
            // Past u32: more frames than any max_stack allows.
            value_size: max_frames.checked_mul(8).ok_or(Error::Inval)?,
            map_flags: 0,
            numa_node: 0,
        };
        Self::with_config(&attr, Config::default())
    }

    /// Creates a map with one CPU and `max_stack` 127 ([`Config::default`]).
    ///
    /// ```
    /// use kstackmap::{uapi::BPF_F_STACK_BUILD_ID, MapAttr, StackMap};
    ///
    /// # fn main() -> Result<(), kstackmap::Error> {
    /// // A build-id map: 32-byte frames, up to 16 per stack.
    /// let attr = MapAttr {
    ///     max_entries: 1000,
    ///     value_size: 16 * 32,
    ///     map_flags: BPF_F_STACK_BUILD_ID,
    ///     ..MapAttr::default()
    /// };
    /// let map = StackMap::new(&attr)?;
    /// assert_eq!(map.n_buckets(), 1024);
    /// // The kernel's checks: a value that isn't whole frames is refused.
    /// let bad = MapAttr { value_size: 40, ..attr };
    /// assert_eq!(StackMap::new(&bad).err(), Some(kstackmap::Error::Inval));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// The kernel's `BPF_MAP_CREATE` errnos, in its order:
    /// - `Inval`: flags outside `BPF_F_NUMA_NODE | BPF_F_RDONLY |
    ///   BPF_F_WRONLY | BPF_F_STACK_BUILD_ID`, RDONLY with WRONLY,
    ///   `max_entries == 0`, `key_size != 4`, a `value_size` that is not
    ///   whole frames (8 bytes, 32 with build ids) or holds more than
    ///   `max_stack` of them, a NUMA node other than 0 or -1.
    /// - `TooBig`: `max_entries > 2^31`, or more than this target's
    ///   freelist can index ([`HEAD_INDEX_MAX`](crate::HEAD_INDEX_MAX)).
    /// - `NoMem`: the allocation failed (or the size overflows).
    #[cfg(feature = "alloc")]
    #[cfg_attr(docsrs, doc(cfg(feature = "alloc")))]
    pub fn new(attr: &MapAttr) -> Result<StackMap, Error> {
        Self::with_config(attr, Config::default())
    }

    /// Creates a map for `cfg.nr_cpus` CPUs and a `perf_event_max_stack`
    /// of `cfg.max_stack`, allocating its memory (fallibly: `NoMem`).
    ///
    /// # Errors
    ///
    /// As [`new`](StackMapIn::new), and `Inval` for `cfg.nr_cpus == 0`.
    #[cfg(feature = "alloc")]
    #[cfg_attr(docsrs, doc(cfg(feature = "alloc")))]
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
    /// alignment slack included.
    ///
    /// # Errors
    ///
    /// The creation errors of `StackMap::with_config`: `Inval`,
    /// `TooBig`, `NoMem` (a size past the address space).
    pub fn storage_size(attr: &MapAttr, cfg: Config) -> Result<usize, Error> {
        let geo = Geometry::new(attr, &cfg)?;
        Ok(Layout::new(&geo)?.storage_size())
    }

    /// Creates a map in caller-provided memory, with no allocator: for a
    /// kernel module's arena or a [`StaticStorage`](crate::StaticStorage).
    ///
    /// `mem` must have at least [`storage_size`](StackMapIn::storage_size)
    /// bytes, at any alignment. The map borrows it for `'a`.
    ///
    /// ```
    /// use core::mem::MaybeUninit;
    /// use kstackmap::{Config, MapAttr, StackMapIn};
    ///
    /// # fn main() -> Result<(), kstackmap::Error> {
    /// let attr = MapAttr { max_entries: 32, value_size: 8 * 8, ..MapAttr::default() };
    /// let mut mem = [MaybeUninit::uninit(); 4096];
    /// assert!(StackMapIn::storage_size(&attr, Config::default())? <= mem.len());
    /// let map = StackMapIn::new_in(&attr, Config::default(), &mut mem)?;
    /// map.get_stackid(0, &[0x1000, 0x2000], 0)?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// The creation errors of `StackMap::with_config` (`Inval`,
    /// `TooBig`), and `NoMem` when `mem` is too small.
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
        let elems = Elems::new(region.elems, layout.stride);
        let freelist = FreeList::new(region.heads, elems);
        freelist.populate();
        StackMapIn {
            geo,
            elems,
            freelist,
            buckets: region.buckets,
            cache: Cache::new(region.cache, geo.n_buckets),
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

    /// Bytes of memory the map uses: its own struct, the freelist heads,
    /// the buckets, the hit cache and the elements. The kernel's
    /// `map_mem_usage` for the same attributes is
    /// `sizeof(struct bpf_stack_map) + n_buckets * 8 + max_entries * (16 + value_size)`;
    /// ours has the same 16-byte element header (the freelist link is in
    /// it), 4-byte buckets, and on ips maps 8 bytes of hit cache per bucket.
    pub fn mem_usage(&self) -> usize {
        size_of::<Self>()
            + core::mem::size_of_val(self.region.heads)
            + core::mem::size_of_val(self.buckets)
            + core::mem::size_of_val(self.cache.entries())
            + core::mem::size_of_val(self.region.elems)
    }
}

/// Test hooks (feature `test-hooks`): for tests of what a stalled
/// operation, such as one interrupted by a handler, lets others do.
#[cfg(feature = "test-hooks")]
impl StackMapIn<'_> {
    /// Makes the next freelist pop from shard `cpu % nr_cpus` (by any
    /// operation on this map, on any thread) call `hook(arg)` in the middle
    /// of that pop: after it read the shard's head and the top slot's link,
    /// before it swaps the head. The hook fires once, disarms itself before
    /// it runs (so it may use the map, including that shard), and there is
    /// one hook slot per process: arming again replaces an unfired hook.
    ///
    /// `arg` is passed through untouched (never read by the library);
    /// tests pass a pointer to the state the hook needs, which must then
    /// outlive the firing pop. On
    /// the LL/SC targets (thumbv7em, ...) the hook build's pop runs split
    /// around the call, which is only fit for emulators (see
    /// `src/freelist.rs`).
    pub fn arm_pop_hook(&self, cpu: usize, hook: fn(*const ()), arg: *const ()) {
        self.freelist.arm_pop_hook(cpu, hook, arg);
    }

    /// Bits of ABA tag in this map's freelist heads: a pop can be fooled
    /// only by `2^tag_bits` pops of its shard during it, except on the
    /// LL/SC targets, where nothing fools it (see `src/freelist.rs`).
    pub fn freelist_tag_bits(&self) -> u32 {
        self.freelist.packing().tag_bits()
    }
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

//! Where a map's memory comes from, and how it is laid out.
//!
//! A map is one block of memory, carved into four arrays:
//!
//! ```text
//! +----------------+-------------+----------------+---------------------------------------+
//! | heads          | buckets     | hit cache      | elements                              |
//! | nr_cpus x Head | n_buckets x | n_cache x      | max_entries x (16 B header            |
//! | (cache-padded) | AtomicU32   | ElemAtomic     |               + value_size B of data) |
//! +----------------+-------------+----------------+---------------------------------------+
//!                                ^ 8-byte aligned ^ 8-byte aligned
//! ```
//!
//! Elements are [`ElemAtomic`] words (`map/elem.rs`); the freelist's links
//! live in their headers. The hit cache (`map/cache.rs`) has 8 bytes per
//! bucket of [`ElemAtomic`] entries on ips maps (`n_buckets` 64-bit or
//! `2 * n_buckets` 32-bit ones) and none on build-id maps.
//!
//! The block is either allocated by [`StackMap::new`](crate::StackMap::new)
//! (feature `alloc`) or handed over by the caller
//! ([`StackMapIn::new_in`](crate::StackMapIn::new_in)), for kernels and
//! firmware that carve memory out of an arena or a `static`
//! ([`StaticStorage`]). Either way every atomic is written in place before
//! the map is used, and nothing is allocated afterwards.

use core::cell::UnsafeCell;
use core::mem::{align_of, size_of, MaybeUninit};
use core::sync::atomic::AtomicBool;

use crate::freelist::{self, Head};
use crate::map::{Geometry, HDR_WORDS};
use crate::sync::{AtomicU32, ElemAtomic, ElemWord};
use crate::Error;

/// Byte offsets of the four arrays in a map's block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pub buckets: usize,
    pub cache: usize,
    pub elems: usize,
    /// Bytes from the (aligned) start of the block to its end.
    pub size: usize,
    /// Words per element: `HDR_WORDS + value_size / size_of::<ElemWord>()`.
    pub stride: usize,
    /// Entries of the hit cache (0 on build-id maps).
    pub n_cache: usize,
}

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// The alignment of the element array: at least 8 bytes, so every
/// element's data is 8-byte aligned (header and value sizes are multiples
/// of 8), and at least the word's own alignment.
const ELEMS_ALIGN: usize = max(8, align_of::<ElemAtomic>());

impl Layout {
    /// The alignment the block's start needs.
    pub const ALIGN: usize = max(
        max(align_of::<Head>(), align_of::<AtomicU32>()),
        ELEMS_ALIGN,
    );

    /// The layout for `g`; `NoMem` if it does not fit the address space,
    /// `TooBig` if the freelist cannot index that many elements here.
    pub fn new(g: &Geometry) -> Result<Layout, Error> {
        if g.attr.max_entries > freelist::MAX_ELEMS {
            return Err(Error::TooBig);
        }
        let word = size_of::<AtomicU32>();
        let max_entries = g.attr.max_entries as usize;
        // The word's value size, not the atomic's: loom's atomics are
        // bigger than the integers they model.
        let stride = HDR_WORDS + g.attr.value_size as usize / size_of::<ElemWord>();
        let n_cache = match (g.n_buckets as usize).checked_mul(8 / size_of::<ElemWord>()) {
            // No cache on build-id maps, nor below one set of two ways.
            _ if g.build_id() => 0,
            Some(n) if n < 2 => 0,
            Some(n) => n,
            None => return Err(Error::NoMem),
        };
        let heads = g
            .nr_cpus
            .checked_mul(size_of::<Head>())
            .ok_or(Error::NoMem)?;
        let buckets = (g.n_buckets as usize)
            .checked_mul(word)
            .ok_or(Error::NoMem)?;
        let cache = n_cache
            .checked_mul(size_of::<ElemAtomic>())
            .ok_or(Error::NoMem)?;
        let elems = max_entries
            .checked_mul(stride)
            .and_then(|w| w.checked_mul(size_of::<ElemAtomic>()))
            .ok_or(Error::NoMem)?;
        // Heads come first (largest alignment), then the buckets, then the
        // cache and the elements, each rounded up to ELEMS_ALIGN.
        let buckets_at = heads;
        let cache_at = buckets_at
            .checked_add(buckets)
            .and_then(|e| e.checked_next_multiple_of(ELEMS_ALIGN))
            .ok_or(Error::NoMem)?;
        let elems_at = cache_at
            .checked_add(cache)
            .and_then(|e| e.checked_next_multiple_of(ELEMS_ALIGN))
            .ok_or(Error::NoMem)?;
        let size = elems_at.checked_add(elems).ok_or(Error::NoMem)?;
        // Slack so that a block of `storage_size` bytes at any address fits.
        size.checked_add(Self::ALIGN).ok_or(Error::NoMem)?;
        if size > isize::MAX as usize {
            return Err(Error::NoMem);
        }
        Ok(Layout {
            buckets: buckets_at,
            cache: cache_at,
            elems: elems_at,
            size,
            stride,
            n_cache,
        })
    }

    /// Bytes a caller must provide: the block plus alignment slack.
    pub fn storage_size(&self) -> usize {
        self.size + Self::ALIGN - 1
    }
}

/// The four arrays, initialised, borrowed from a block that outlives `'a`.
///
/// # Invariants
///
/// Each slice and its `raw_*` twin cover the same initialised elements;
/// the raw pointers come from the block's own pointer (not from the
/// shared slices), so `drop_in_place` may use them for the destructors.
pub(crate) struct Region<'a> {
    pub heads: &'a [Head],
    pub buckets: &'a [AtomicU32],
    pub cache: &'a [ElemAtomic],
    pub elems: &'a [ElemAtomic],
    raw_heads: *mut [Head],
    raw_buckets: *mut [AtomicU32],
    raw_elem_words: [*mut [ElemAtomic]; 2],
}

impl<'a> Region<'a> {
    /// Writes every atomic of the block at `base` and borrows the arrays.
    ///
    /// # Safety
    ///
    /// `base` is aligned to [`Layout::ALIGN`], valid for reads and writes of
    /// `layout.size` bytes for `'a`, and nothing else accesses those bytes
    /// during `'a` except through the returned region.
    pub unsafe fn init(base: *mut u8, g: &Geometry, layout: &Layout) -> Region<'a> {
        let word = || AtomicU32::new(0);
        let n_elem_words = g.attr.max_entries as usize * layout.stride;
        // SAFETY: (all four calls) the offsets come from `layout`, which
        // places each array inside the block, suitably aligned (heads at
        // offset 0 of an ALIGN-aligned base; buckets, u32 words, right after
        // the heads, whose size is a multiple of their alignment; the cache
        // and the elements at multiples of ELEMS_ALIGN, itself a multiple of
        // ElemAtomic's alignment, from a base aligned to at least
        // ELEMS_ALIGN); the caller gives us the block exclusively for 'a.
        let (raw_heads, buckets, cache, elems) = unsafe {
            (
                init_slice(base, g.nr_cpus, freelist::new_head),
                init_slice(base.add(layout.buckets), g.n_buckets as usize, word),
                init_slice(base.add(layout.cache), layout.n_cache, || {
                    ElemAtomic::new(0)
                }),
                init_slice(base.add(layout.elems), n_elem_words, || ElemAtomic::new(0)),
            )
        };
        // SAFETY: each pointer covers initialised elements in the block we
        // hold for 'a; from now on they are only read through these shared
        // slices (atomics: interior mutability), until `drop_in_place`.
        unsafe {
            Region {
                heads: &*raw_heads,
                buckets: &*buckets,
                cache: &*cache,
                elems: &*elems,
                raw_heads,
                raw_buckets: buckets,
                raw_elem_words: [cache, elems],
            }
        }
    }

    /// Runs the destructors of every atomic (there are none, except under
    /// loom, whose atomics register with the model).
    ///
    /// # Safety
    ///
    /// The region is not used again.
    pub unsafe fn drop_in_place(&mut self) {
        if core::mem::needs_drop::<Head>() {
            // SAFETY: initialised by `init`, dropped once (caller's promise),
            // through the block's own pointer; the shared slices are dead.
            unsafe { core::ptr::drop_in_place(self.raw_heads) };
        }
        if core::mem::needs_drop::<AtomicU32>() {
            // SAFETY: as above.
            unsafe { core::ptr::drop_in_place(self.raw_buckets) };
        }
        if core::mem::needs_drop::<ElemAtomic>() {
            for raw in self.raw_elem_words {
                // SAFETY: as above.
                unsafe { core::ptr::drop_in_place(raw) };
            }
        }
    }
}

/// Writes `n` values made by `make` at `at`; returns the initialised slice.
///
/// # Safety
///
/// `at` is aligned for `T` and valid for writes of `n` `T`s, exclusively.
unsafe fn init_slice<T>(at: *mut u8, n: usize, make: impl Fn() -> T) -> *mut [T] {
    let at = at.cast::<T>();
    for i in 0..n {
        // SAFETY: `i < n`, inside the caller's block; aligned by contract.
        unsafe { at.add(i).write(make()) };
    }
    core::ptr::slice_from_raw_parts_mut(at, n)
}

/// Memory for one map in a `static`, for code with no allocator.
///
/// `N` is in bytes; [`StackMapIn::storage_size`](crate::StackMapIn::storage_size)
/// says how many a map needs. [`take`](StaticStorage::take) hands the bytes
/// out once, so a `static` needs no `static mut`:
///
/// ```
/// use kstackmap::{Config, MapAttr, StackMapIn, StaticStorage};
///
/// static MEM: StaticStorage<{ 64 * 1024 }> = StaticStorage::new();
///
/// let attr = MapAttr { max_entries: 64, value_size: 8 * 32, ..MapAttr::default() };
/// let map = StackMapIn::new_in(&attr, Config::default(), MEM.take().unwrap()).unwrap();
/// let id = map.get_stackid(0, &[0x1000, 0x2000], 0).unwrap();
/// assert!(MEM.take().is_none(), "handed out once only");
/// # let _ = id;
/// ```
pub struct StaticStorage<const N: usize> {
    taken: AtomicBool,
    mem: UnsafeCell<[MaybeUninit<u8>; N]>,
}

// SAFETY: the only access to `mem` is the `&'static mut` that `take` hands
// out, at most once (guarded by the `taken` swap), so no two threads can
// reach the bytes through this type.
unsafe impl<const N: usize> Sync for StaticStorage<N> {}

impl<const N: usize> StaticStorage<N> {
    /// Uninitialised storage, not yet taken.
    pub const fn new() -> Self {
        StaticStorage {
            taken: AtomicBool::new(false),
            mem: UnsafeCell::new([MaybeUninit::uninit(); N]),
        }
    }

    /// The bytes, the first time; `None` after that.
    #[allow(clippy::mut_from_ref)] // handed out at most once: see `taken`
    pub fn take(&'static self) -> Option<&'static mut [MaybeUninit<u8>]> {
        // core's atomic, not `sync`'s: this is a one-shot guard in a `static`
        // (loom atomics can't be built in a const), not a modelled protocol.
        // AcqRel: whoever wins the swap is the only one to ever see `false`.
        if self.taken.swap(true, core::sync::atomic::Ordering::AcqRel) {
            return None;
        }
        // SAFETY: the swap above returned false exactly once, so this is the
        // only mutable borrow of `mem` there will ever be.
        Some(unsafe { &mut *self.mem.get() })
    }
}

/// Shows the size and whether the bytes were handed out; never the bytes
/// (they may be uninitialised, or in use by a map).
impl<const N: usize> core::fmt::Debug for StaticStorage<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StaticStorage")
            .field("len", &N)
            // Relaxed: a diagnostic snapshot; nothing is read behind it.
            .field(
                "taken",
                &self.taken.load(core::sync::atomic::Ordering::Relaxed),
            )
            .finish()
    }
}

impl<const N: usize> Default for StaticStorage<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    extern crate std;
    use super::StaticStorage;

    #[test]
    fn static_storage_debug_shows_size_and_taken() {
        static MEM: StaticStorage<64> = StaticStorage::new();
        assert_eq!(
            std::format!("{MEM:?}"),
            "StaticStorage { len: 64, taken: false }"
        );
        let _ = MEM.take();
        assert_eq!(
            std::format!("{MEM:?}"),
            "StaticStorage { len: 64, taken: true }"
        );
    }
}

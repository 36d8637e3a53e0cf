//! One map element: a 16-byte header and the value's frames, laid out as
//! the kernel's `struct stack_map_bucket` (`fnode`, `hash`, `nr`, `data[]`),
//! with a sequence number in place of the kernel's padding.
//!
//! An element is `HDR_WORDS + value_size / size_of::<ElemWord>()` atomic
//! words ([`ElemAtomic`]: `AtomicU64` where the target has 64-bit atomics,
//! `AtomicU32` elsewhere or with `--cfg kstackmap_head32`). Elements are
//! contiguous and the array starts on an 8-byte boundary, so with
//! `value_size % 8 == 0` every element's data is 8-byte aligned.
//!
//! ```text
//! 64-bit words:  | seq (bits 0-31) | link (32-63) | hash (0-31) | nr (32-63) | ip 0 | ip 1 | ...
//!                  word 0                         word 1                      word 2...
//! 32-bit words:  | seq | link | hash | nr | ip 0 lo | ip 0 hi | ip 1 lo | ...
//!                  0     1      2      3    4 ...
//! ```
//!
//! Data words hold the value's bytes in native byte order: an ip is one
//! 64-bit word (or its two 32-bit halves in memory order), a build-id frame
//! is the 32 bytes of its `StackBuildId`. So `lookup` hands out exactly the
//! bytes the kernel's `memcpy` would.
//!
//! # Who writes what
//!
//! - `seq`, `hash`, `nr`, data: only the slot's holder, inside a write
//!   section (`protocol.rs`: seq odd, stores, seq even).
//! - `link`: only the slot's holder, when it pushes the slot on the
//!   freelist ([`Elems`], the freelist's [`Links`]); it is meaningful
//!   only while the slot is on a freelist stack.
//! - Readers load any word at any time (Relaxed) and trust what they read
//!   only after validating it with `seq` (`observe` in `protocol.rs`, the
//!   cache's slot read in `cache.rs`).
//!
//! # Sharing one word between `seq` and `link` (64-bit words)
//!
//! A link store rewrites the word whose `seq` half readers load with
//! Acquire. It keeps the `seq` bits, so a reader's validation sees the same
//! number; and it is a Release store, so a reader whose Acquire load reads
//! it still happens-after everything the holder saw, which includes the
//! slot's last write section (the holder took the slot from a bucket with
//! an Acquire RMW, or wrote it itself). The write section's `seq` stores
//! clear the link bits: the link of a held slot is never read as a link
//! (a popper that read it through a stale head fails its CAS: the tag).

use crate::freelist::Links;
use crate::sync::{ElemAtomic, ElemWord, Ordering};

/// Bytes in one element word.
pub(crate) const WORD: usize = core::mem::size_of::<ElemWord>();
/// Words of an element's header: 16 bytes.
pub(crate) const HDR_WORDS: usize = 16 / WORD;
/// Words per ip in an element's data.
const IP_WORDS: usize = 8 / WORD;

static_assertions::const_assert_eq!(HDR_WORDS * WORD, 16);
static_assertions::const_assert_eq!(IP_WORDS * WORD, 8);

/// An element's words, split into header and data once (no index checks,
/// and so no panic paths, on the header afterwards).
#[derive(Clone, Copy)]
pub(crate) struct Elem<'m> {
    hdr: &'m [ElemAtomic; HDR_WORDS],
    data: &'m [ElemAtomic],
}

impl<'m> Elem<'m> {
    /// The element made of `words` (`None` if shorter than a header).
    #[inline]
    pub(crate) fn new(words: &'m [ElemAtomic]) -> Option<Self> {
        let (hdr, data) = words.split_first_chunk::<HDR_WORDS>()?;
        Some(Elem { hdr, data })
    }

    /// Is this the same element (the same memory) as `other`?
    #[inline]
    pub(crate) fn is(&self, other: &Elem<'_>) -> bool {
        core::ptr::eq(self.hdr, other.hdr)
    }

    /// The first `nr` frames of an ips element (Relaxed loads: the caller
    /// validates them with `seq`, or holds the slot).
    pub(crate) fn ips(&self, nr: usize) -> impl Iterator<Item = u64> + '_ {
        self.data.chunks_exact(IP_WORDS).take(nr).map(|w| {
            let mut ip = [0u8; 8];
            for (dst, w) in ip.chunks_exact_mut(WORD).zip(w) {
                // Relaxed: see above.
                dst.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
            }
            u64::from_ne_bytes(ip)
        })
    }

    /// Does the data start with exactly `ips`? (`nr` is the caller's check.)
    #[inline]
    pub(crate) fn eq_ips(&self, ips: &[u64]) -> bool {
        let Some(data) = self.data.get(..ips.len() * IP_WORDS) else {
            return false;
        };
        // The first frame alone, then the rest with no early exit: the hit
        // cache compares stacks whose hash it does not know, and different
        // stacks nearly always differ in their first frame; equal ones are
        // compared whole either way, and the branch-free loop is shorter.
        let (Some(first), Some((w0, data))) = (ips.first(), data.split_at_checked(IP_WORDS)) else {
            return ips.is_empty();
        };
        let mut diff = 0;
        for (w, v) in w0.iter().zip(ip_to_words(*first)) {
            // Relaxed: as below.
            diff |= w.load(Ordering::Relaxed) ^ v;
        }
        if diff != 0 {
            return false;
        }
        for (w, &ip) in data.chunks_exact(IP_WORDS).zip(ips.get(1..).unwrap_or(&[])) {
            for (w, v) in w.iter().zip(ip_to_words(ip)) {
                // Relaxed: element words are read under the sequence
                // number, whose Acquire load and fence order these loads.
                diff |= w.load(Ordering::Relaxed) ^ v;
            }
        }
        diff == 0
    }

    /// Stores `ips` at the start of the data; the holder, in a write section.
    #[inline]
    pub(crate) fn store_ips(&self, ips: &[u64]) {
        for (w, &ip) in self.data.chunks_exact(IP_WORDS).zip(ips) {
            for (w, v) in w.iter().zip(ip_to_words(ip)) {
                // Relaxed: inside the slot's write section (see `write`).
                w.store(v, Ordering::Relaxed);
            }
        }
    }

    /// Stores `bytes` (a multiple of [`WORD`] long) from data word `at`;
    /// the holder, in a write section.
    pub(crate) fn store_bytes(&self, at: usize, bytes: &[u8]) {
        let Some(dst) = self.data.get(at..) else {
            return;
        };
        for (w, c) in dst.iter().zip(bytes.chunks_exact(WORD)) {
            let mut b = [0u8; WORD];
            b.copy_from_slice(c);
            // Relaxed: inside the slot's write section (see `write`).
            w.store(ElemWord::from_ne_bytes(b), Ordering::Relaxed);
        }
    }

    /// Are the first `n` data words of both elements equal?
    pub(crate) fn eq_data(&self, other: &Elem<'_>, n: usize) -> bool {
        let (Some(a), Some(b)) = (self.data.get(..n), other.data.get(..n)) else {
            return false;
        };
        // Relaxed: read under both elements' sequence numbers (ours is
        // held by the caller, the other one is validated by `observe`).
        a.iter()
            .zip(b)
            .all(|(x, y)| x.load(Ordering::Relaxed) == y.load(Ordering::Relaxed))
    }

    /// Copies data words into `out` as native-endian bytes, as many as fit
    /// whole (callers pass a multiple of 8 bytes).
    #[inline]
    pub(crate) fn copy_out(&self, out: &mut [u8]) {
        for (chunk, w) in out.chunks_exact_mut(WORD).zip(self.data) {
            // Relaxed: read under the sequence number (see `observe`), or
            // by the slot's holder.
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
    }
}

/// An ip as the element words that hold it, in memory order.
#[inline(always)]
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)] // per width
fn ip_to_words(ip: u64) -> [ElemWord; IP_WORDS] {
    #[cfg(all(target_has_atomic = "64", not(kstackmap_head32)))]
    {
        [ip]
    }
    #[cfg(any(not(target_has_atomic = "64"), kstackmap_head32))]
    {
        let b = ip.to_ne_bytes();
        [
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        ]
    }
}

// ---------------------------------------------------------------- header
// 64-bit words: [seq | link << 32, hash | nr << 32].

#[cfg(all(target_has_atomic = "64", not(kstackmap_head32)))]
impl Elem<'_> {
    /// The sequence number.
    #[inline]
    pub(crate) fn seq(&self, order: Ordering) -> u32 {
        let [w, _] = self.hdr;
        w.load(order) as u32
    }

    /// Sets the sequence number (the holder only); clears the link.
    #[inline]
    pub(crate) fn set_seq(&self, seq: u32, order: Ordering) {
        let [w, _] = self.hdr;
        w.store(u64::from(seq), order);
    }

    /// The freelist link (Relaxed; meaningful only on a freelist).
    #[inline]
    fn link(&self) -> u32 {
        let [w, _] = self.hdr;
        // Relaxed: ordered by the popper's Acquire head load (`Links`).
        (w.load(Ordering::Relaxed) >> 32) as u32
    }

    /// Sets the freelist link (the holder only), keeping `seq`.
    #[inline]
    fn set_link(&self, next: u32) {
        let [w, _] = self.hdr;
        // Relaxed: the holder reads the seq it (or the slot's last writer,
        // which it acquired from) stored.
        let seq = w.load(Ordering::Relaxed) & 0xffff_ffff;
        // Release: a reader's Acquire load of `seq` may read this store
        // instead of `end_write`'s; it must still see the slot's data (see
        // the module docs). Also published by the push's Release CAS.
        w.store(seq + (u64::from(next) << 32), Ordering::Release);
    }

    /// `(hash, nr)`, Relaxed: trusted only after validation with `seq`.
    #[inline]
    pub(crate) fn hash_nr(&self) -> (u32, u32) {
        let [_, w] = self.hdr;
        // Relaxed: read under the sequence number (see `observe`).
        let v = w.load(Ordering::Relaxed);
        (v as u32, (v >> 32) as u32)
    }

    /// Sets `hash` and `nr`: the holder, in a write section.
    #[inline]
    pub(crate) fn set_hash_nr(&self, hash: u32, nr: u32) {
        let [_, w] = self.hdr;
        // Relaxed: inside the slot's write section (see `write`).
        w.store(u64::from(hash) | u64::from(nr) << 32, Ordering::Relaxed);
    }
}

// 32-bit words: [seq, link, hash, nr].

#[cfg(any(not(target_has_atomic = "64"), kstackmap_head32))]
impl Elem<'_> {
    /// The sequence number.
    #[inline]
    pub(crate) fn seq(&self, order: Ordering) -> u32 {
        let [seq, _, _, _] = self.hdr;
        seq.load(order)
    }

    /// Sets the sequence number (the holder only).
    #[inline]
    pub(crate) fn set_seq(&self, seq: u32, order: Ordering) {
        let [w, _, _, _] = self.hdr;
        w.store(seq, order);
    }

    /// The freelist link (Relaxed; meaningful only on a freelist).
    #[inline]
    fn link(&self) -> u32 {
        let [_, link, _, _] = self.hdr;
        // Relaxed: ordered by the popper's Acquire head load (`Links`).
        link.load(Ordering::Relaxed)
    }

    /// Sets the freelist link (the holder only).
    #[inline]
    fn set_link(&self, next: u32) {
        let [_, link, _, _] = self.hdr;
        // Relaxed: a word of its own, published by the push's Release CAS
        // (pairs with the popper's Acquire head load).
        link.store(next, Ordering::Relaxed);
    }

    /// `(hash, nr)`, Relaxed: trusted only after validation with `seq`.
    #[inline]
    pub(crate) fn hash_nr(&self) -> (u32, u32) {
        let [_, _, hash, nr] = self.hdr;
        // Relaxed: read under the sequence number (see `observe`).
        (hash.load(Ordering::Relaxed), nr.load(Ordering::Relaxed))
    }

    /// Sets `hash` and `nr`: the holder, in a write section.
    #[inline]
    pub(crate) fn set_hash_nr(&self, hash: u32, nr: u32) {
        let [_, _, h, n] = self.hdr;
        // Relaxed: inside the slot's write section (see `write`).
        h.store(hash, Ordering::Relaxed);
        // Relaxed: as above.
        n.store(nr, Ordering::Relaxed);
    }
}

/// The map's elements as seen by one slot index: `stride` words each.
///
/// # Invariants
///
/// `stride >= HDR_WORDS`, and `n * stride <= elems.len()`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Elems<'a> {
    elems: &'a [ElemAtomic],
    stride: usize,
    n: usize,
}

impl<'a> Elems<'a> {
    /// `n` elements of `stride` words at the start of `elems` (fewer if
    /// `elems` is too short).
    pub(crate) fn new(elems: &'a [ElemAtomic], stride: usize) -> Self {
        let stride = stride.max(HDR_WORDS);
        // INVARIANT: n * stride <= elems.len() and stride >= HDR_WORDS.
        let n = elems.len() / stride;
        Elems { elems, stride, n }
    }

    /// Element `slot`, or `None` past the end.
    #[inline]
    pub(crate) fn get(&self, slot: u32) -> Option<Elem<'a>> {
        let start = (slot as usize).checked_mul(self.stride)?;
        let words = self.elems.get(start..start.checked_add(self.stride)?)?;
        Elem::new(words)
    }
}

/// The freelist's links live in the elements' headers (no side array).
impl Links for Elems<'_> {
    #[inline]
    fn len(&self) -> usize {
        self.n
    }
    #[inline]
    fn load(&self, i: u32) -> Option<u32> {
        self.get(i).map(|e| e.link())
    }
    #[inline]
    fn store(&self, i: u32, next: u32) {
        if let Some(e) = self.get(i) {
            e.set_link(next);
        }
    }
    /// Link `i` is header word 1 of element `i` (32-bit words: the only
    /// kind the exclusive-pop targets have).
    #[cfg(all(kstackmap_llsc, not(loom), not(miri)))]
    fn raw(&self) -> (*const u32, u32) {
        static_assertions::const_assert_eq!(WORD, 4);
        // `wrapping_add`: never dereferenced unless an element exists.
        let base = self.elems.as_ptr().wrapping_add(1).cast::<u32>();
        (base, (self.stride * WORD) as u32)
    }
}

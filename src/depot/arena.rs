//! The arena: a bump allocator of immutable records, the id allocator
//! beside it, and the per-CPU counters.
//!
//! # Records
//!
//! A record is one header word followed by the stack's words, at their
//! exact length:
//!
//! ```text
//! header (u64): bits 0..32  nr, the number of words that follow
//!               bits 32..40 kind (0 = ips, 1 = build-id frames, 4 words each)
//! ```
//!
//! # Reservation
//!
//! [`Cursors::words`] counts the arena words taken, [`Cursors::ids`] the
//! ids. Both move by compare-and-swap loops that refuse to pass their
//! limit, so a full arena or id space leaves the cursor where it was (no
//! `fetch_add` past the end to undo). A thread that reserved and then did
//! not publish (it lost a race to the same stack, or the other cursor was
//! full) gives its words and id back with one CAS each, which succeeds
//! when nobody reserved after it: always, when there is no concurrent
//! intern. When the CAS fails the words or id stay unused until `clear`
//! and are counted as wasted ([`CpuStats`]).
//!
//! # Invariants
//!
//! - The words `[0, words)` are each in exactly one of: a published
//!   record, a record being written by the one thread that reserved it,
//!   or wasted. Words at or above the cursor are free.
//! - A thread writes only words it reserved, and only before it publishes
//!   them (see `index`): published records are never written again until
//!   `clear(&mut self)`.
//! - Words given back were written by the giver before its releasing
//!   give-back CAS; the next taker's acquiring CAS orders those writes
//!   before its own.

use core::marker::PhantomData;

use crate::sync::{AtomicU32, AtomicUsize, Ordering};

/// Kind of a record holding instruction pointers.
pub(crate) const KIND_IPS: u64 = 0;
/// Kind of a record holding [`StackBuildId`](crate::StackBuildId) frames.
pub(crate) const KIND_BUILD_IDS: u64 = 1;

/// The header word of a record of `nr` words of `kind`.
#[inline]
pub(crate) fn header(kind: u64, nr: u32) -> u64 {
    nr as u64 | kind << 32
}

/// The number of words after a record's header.
#[inline]
pub(crate) fn header_len(h: u64) -> usize {
    h as u32 as usize
}

/// The kind of a record.
#[inline]
pub(crate) fn header_kind(h: u64) -> u64 {
    (h >> 32) & 0xff
}

/// The two shared cursors, in one cache line: an intern that reserves
/// moves both.
#[derive(Debug)]
pub(crate) struct Cursors {
    /// Ids taken: the next id to hand out. Never above the capacity.
    pub ids: AtomicU32,
    /// Arena words taken. Never above the arena's length.
    pub words: AtomicU32,
}

impl Cursors {
    pub(crate) fn new() -> Self {
        Cursors {
            ids: AtomicU32::new(0),
            words: AtomicU32::new(0),
        }
    }

    /// Takes `n` words if they fit below `limit`: their first offset.
    #[inline]
    pub(crate) fn take_words(&self, n: u32, limit: u32) -> Option<u32> {
        take(&self.words, n, limit)
    }

    /// Gives back the words `[start, start + n)` taken by `take_words`, if
    /// nothing was taken after them; false when they stay wasted.
    #[inline]
    pub(crate) fn give_back_words(&self, start: u32, n: u32) -> bool {
        give_back(&self.words, start, n)
    }

    /// Takes the next id if it is below `limit`.
    #[inline]
    pub(crate) fn take_id(&self, limit: u32) -> Option<u32> {
        take(&self.ids, 1, limit)
    }

    /// Gives back `id` taken by `take_id`, if no later id was taken; false
    /// when it stays wasted.
    #[inline]
    pub(crate) fn give_back_id(&self, id: u32) -> bool {
        give_back(&self.ids, id, 1)
    }
}

/// Moves `cursor` from `c` to `c + n` if that stays within `limit`;
/// returns `c`. Retries only when another thread moved the cursor.
#[inline]
fn take(cursor: &AtomicU32, n: u32, limit: u32) -> Option<u32> {
    // Relaxed: this value only seeds the compare-and-swap below.
    let mut cur = cursor.load(Ordering::Relaxed);
    loop {
        let end = cur.checked_add(n)?;
        if end > limit {
            return None;
        }
        // Success AcqRel: Acquire pairs with the Release of `give_back`, so
        // the writes of whoever gave these words (or this id) back happen
        // before ours; Release keeps that chain going for the next taker
        // that reads our value. Failure Relaxed: we only retry with it.
        match cursor.compare_exchange(cur, end, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return Some(cur),
            Err(now) => cur = now,
        }
    }
}

/// Moves `cursor` back from `start + n` to `start`.
#[inline]
fn give_back(cursor: &AtomicU32, start: u32, n: u32) -> bool {
    let Some(end) = start.checked_add(n) else {
        return false;
    };
    // Release: pairs with the Acquire of the next `take` of these words or
    // this id, which then sees our writes to them as done. Failure
    // Relaxed: the words stay wasted, nothing is read.
    cursor
        .compare_exchange(end, start, Ordering::Release, Ordering::Relaxed)
        .is_ok()
}

/// One CPU's counters. Each is a plain event count: Relaxed increments,
/// Relaxed sums (see [`StackDepotIn::stats`](crate::StackDepotIn::stats)).
#[derive(Debug)]
pub(crate) struct CpuStats {
    /// Stacks published from this CPU.
    pub published: AtomicUsize,
    /// Arena words (headers included) of those stacks' records.
    pub record_words: AtomicUsize,
    /// Interns that lost a race to publish the same stack.
    pub lost_races: AtomicUsize,
    /// Ids reserved and not given back.
    pub wasted_ids: AtomicUsize,
    /// Arena words reserved and not given back.
    pub wasted_words: AtomicUsize,
    /// Interns refused because the probe run reached its bound.
    pub probe_limit: AtomicUsize,
}

impl CpuStats {
    pub(crate) fn new() -> Self {
        CpuStats {
            published: AtomicUsize::new(0),
            record_words: AtomicUsize::new(0),
            lost_races: AtomicUsize::new(0),
            wasted_ids: AtomicUsize::new(0),
            wasted_words: AtomicUsize::new(0),
            probe_limit: AtomicUsize::new(0),
        }
    }

    /// Adds `n` to `counter`.
    #[inline]
    pub(crate) fn add(counter: &AtomicUsize, n: usize) {
        // Relaxed: an event count; nothing is ordered by it.
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The arena's words: plain memory behind a raw pointer.
///
/// # Invariants
///
/// `base` points to `len` words, valid for reads and writes for `'a`, that
/// nothing else reaches except through this arena. Under loom, `track`
/// has one cell per word.
pub(crate) struct Arena<'a> {
    base: *mut u64,
    len: usize,
    #[cfg(loom)]
    track: alloc::vec::Vec<crate::sync::Track>,
    _words: PhantomData<&'a [u64]>,
}

impl<'a> Arena<'a> {
    /// The arena of `len` words at `base`.
    ///
    /// # Safety
    ///
    /// `base` is aligned for `u64`, valid for reads and writes of `len`
    /// words for `'a`, and reached by nothing else during `'a`.
    pub(crate) unsafe fn new(base: *mut u64, len: usize) -> Self {
        // INVARIANT: the caller's promise.
        Arena {
            base,
            len,
            #[cfg(loom)]
            track: (0..len).map(|_| crate::sync::Track::new()).collect(),
            _words: PhantomData,
        }
    }

    /// Words in the arena.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Writes a record: `header` at `off`, then `words`. Does nothing if it
    /// would not fit (a reservation never lets that happen).
    ///
    /// # Safety
    ///
    /// The caller reserved `[off, off + 1 + words.len())` (see
    /// [`Cursors::take_words`]) and has not published or given it back:
    /// no other thread reads or writes those words now.
    #[inline]
    pub(crate) unsafe fn write(&self, off: usize, header: u64, words: &[u64]) {
        let Some(end) = off.checked_add(1).and_then(|o| o.checked_add(words.len())) else {
            return;
        };
        if end > self.len {
            return;
        }
        #[cfg(not(loom))]
        // SAFETY: `off + 1 + words.len() <= len`, so every word written is
        // inside the arena (type invariant); the caller owns these words
        // exclusively, so nothing reads or writes them concurrently;
        // `words` is a caller slice, disjoint from the arena's memory (the
        // arena is reached only through `self`).
        unsafe {
            self.base.add(off).write(header);
            core::ptr::copy_nonoverlapping(words.as_ptr(), self.base.add(off + 1), words.len());
        }
        #[cfg(loom)]
        {
            let all = core::iter::once(header).chain(words.iter().copied());
            for (i, w) in (off..end).zip(all) {
                if let Some(t) = self.track.get(i) {
                    // SAFETY: as above, for one word; loom checks the
                    // exclusivity claim.
                    t.with_mut(|| unsafe { self.base.add(i).write(w) });
                }
            }
        }
    }

    /// The record at `off`: its header and its words, borrowed from the
    /// arena. `None` if the header names words beyond the arena (never, for
    /// a record written by [`write`](Arena::write)).
    ///
    /// # Safety
    ///
    /// A record was written at `off`, that write happens before this call,
    /// and no thread writes these words while the returned slice lives
    /// (published records are never written again while the depot is
    /// shared).
    #[inline]
    pub(crate) unsafe fn record(&self, off: usize) -> Option<(u64, &[u64])> {
        if off >= self.len {
            return None;
        }
        #[cfg(loom)]
        let h = self.track.get(off)?.with(|| {
            // SAFETY: in bounds (checked above); written before this call
            // (caller's promise, checked by loom).
            unsafe { self.base.add(off).read() }
        });
        #[cfg(not(loom))]
        // SAFETY: `off < len`: inside the arena; the caller promises the
        // word was written before this call and is not being written.
        let h = unsafe { self.base.add(off).read() };
        let n = header_len(h);
        let start = off + 1;
        let end = start.checked_add(n).filter(|&end| end <= self.len)?;
        #[cfg(loom)]
        for t in self.track.get(start..end)? {
            // The reads happen through the slice below; this tells loom
            // about them, so a read not ordered after the record's write is
            // reported.
            t.with(|| ());
        }
        // SAFETY: `[start, end)` is inside the arena; the caller promises
        // the record's words were written before this call and that none
        // is written while the slice (borrowed from `self`) lives.
        Some((h, unsafe {
            core::slice::from_raw_parts(self.base.add(start), end - start)
        }))
    }
}

//! The stack trace map: `bpf_get_stackid` and the syscall side.
//!
//! # Protocols
//!
//! **Elements.** Slot `i` is a 16-byte header (a sequence number, the
//! freelist link, the trace hash, the frame count `nr`) and the value's
//! bytes, in atomic words (`elem.rs` has the layout). A slot is in exactly
//! one place at any time: the freelist, one bucket, or the hands of one
//! thread (a writer between `pop` and publish, or a remover between taking
//! it out of its bucket and `push`).
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
//! can't make a concurrent insert disappear. The hit cache (`cache.rs`)
//! reads through `observe` too, and adds one read of a slot validated by
//! its sequence number alone.
//!
//! # Invariants
//!
//! - Every slot index `< max_entries` is in exactly one of: the freelist,
//!   one bucket, one thread's hands. This rests on the freelist's ABA
//!   defence (`freelist.rs`, "ABA: the exact bound"): on thumbv7m,
//!   thumbv7em and thumbv8m.main a pop can't be fooled at all; elsewhere
//!   only by `2^T` pops of one shard while one pop is stalled, `T` being
//!   the head word's bits minus `bit length of max_entries` (at least 32
//!   with 64-bit atomics, at least 16 on the 32-bit head). Were it fooled,
//!   a slot would be in a bucket and on the freelist at once, a writer
//!   could rewrite a published slot, and a reader could spin in `observe`
//!   on its odd sequence number.
//! - A slot in a bucket has an even sequence number and is not written.
//! - A slot in bucket `id` holds a trace whose `hash & (n_buckets - 1)` is
//!   `id`.
//! - On ips maps, every complete version of a slot has `hash ==
//!   trace_hash(frames)` (the cache relies on it: `cache.rs`).
//!
//! # Progress
//!
//! `get_stackid` is lock-free: the freelist is, publish is one atomic
//! read-modify-write, and a read retries only because a writer completed a
//! change to that bucket or slot in the meantime (given conservation, see
//! the invariants: a writer only writes slots no bucket holds). It never allocates,
//! blocks or panics. The sequence number is 32 bits and moves by 2 per
//! rewrite of a slot: a read is fooled only if one slot is rewritten 2^31
//! times while the read is in progress.

use super::elem::Elem;
use super::StackMapIn;
use crate::sync::{fence, spin_loop, AtomicU32, Ordering};
use crate::Error;

/// What a reader saw in a bucket.
pub(super) enum Seen<T> {
    Empty,
    /// The bucket word (slot + 1) and what the read returned.
    Slot(u32, T),
}

/// The outcome of comparing a trace with a bucket's element.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Cmp {
    Same,
    Other,
}

/// What `__bpf_get_stackid` does after comparing with the bucket:
/// `Err(Ok(b))` a hit on bucket word `b`, `Err(Err(Exist))` a collision
/// without REUSE, `Ok(expect)` store the trace, publishing over the bucket
/// word `expect` (0 when empty).
pub(super) fn decide(seen: Seen<Cmp>, reuse: bool) -> Result<u32, Result<u32, Error>> {
    match seen {
        Seen::Slot(b, Cmp::Same) => Err(Ok(b)),
        Seen::Slot(_, Cmp::Other) if !reuse => Err(Err(Error::Exist)),
        Seen::Slot(b, Cmp::Other) => Ok(b),
        Seen::Empty => Ok(0),
    }
}

impl Elem<'_> {
    /// Makes the sequence number odd: from here until `end_write` readers
    /// that look at this slot retry.
    fn begin_write(&self) -> u32 {
        // Relaxed: only the owner writes `seq`, so it reads its own value.
        let s = self.seq(Ordering::Relaxed);
        self.set_seq(s.wrapping_add(1), Ordering::Relaxed);
        // Release fence: pairs with the reader's Acquire fence in `observe`,
        // so a reader that sees any data store below also sees the odd seq.
        fence(Ordering::Release);
        s
    }

    fn end_write(&self, s: u32) {
        // Release: pairs with the Acquire load of `seq` in `observe`; a
        // reader that sees the even value sees all data stored before it.
        self.set_seq(s.wrapping_add(2), Ordering::Release);
    }
}

impl<'a> StackMapIn<'a> {
    #[inline]
    pub(super) fn elem(&self, slot: u32) -> Option<Elem<'a>> {
        self.elems.get(slot)
    }

    pub(super) fn bucket(&self, id: u32) -> Option<&'a AtomicU32> {
        self.buckets.get(id as usize)
    }

    /// Reads bucket `id`'s element with `read`, retrying until the read saw
    /// one complete version of a slot that sat in the bucket during the call.
    pub(super) fn observe<T>(
        &self,
        bucket: &AtomicU32,
        mut read: impl FnMut(Elem<'a>) -> T,
    ) -> Seen<T> {
        loop {
            // Acquire: pairs with the publishing swap / compare_exchange
            // (Release), so the element's words are visible.
            let b = bucket.load(Ordering::Acquire);
            let Some(e) = b.checked_sub(1).and_then(|slot| self.elem(slot)) else {
                return Seen::Empty;
            };
            // Acquire: pairs with `end_write`'s Release store.
            let s1 = e.seq(Ordering::Acquire);
            if s1 & 1 == 0 {
                let out = read(e);
                // Acquire fence: pairs with `begin_write`'s Release fence; if
                // `read` saw a later writer's data, the loads below see it.
                fence(Ordering::Acquire);
                // Acquire: if the slot was taken out and published here again,
                // this load makes the new version's sequence number visible.
                let b2 = bucket.load(Ordering::Acquire);
                // Relaxed: ordered after the fence above.
                let s2 = e.seq(Ordering::Relaxed);
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
    pub(super) fn write(&self, e: Elem<'a>, hash: u32, nr: u32, data: impl FnOnce(Elem<'a>)) {
        let s = e.begin_write();
        e.set_hash_nr(hash, nr);
        data(e);
        e.end_write(s);
    }

    /// Pops a free slot for writing: `NoMem` when every element is in use.
    pub(super) fn take_slot(&self, cpu: usize) -> Result<(u32, Elem<'a>), Error> {
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
    pub(super) fn publish(
        &self,
        cpu: usize,
        bucket: &AtomicU32,
        expect: u32,
        slot: u32,
        reuse: bool,
    ) -> bool {
        let new = slot + 1;
        let old = if reuse {
            // AcqRel: Release publishes the slot's words to readers'
            // Acquire bucket loads (observe() re-validates under the
            // sequence number, but lookup_and_delete's swap copies the slot
            // without it: it pairs with this Release); Acquire orders our
            // later push of the old slot after its previous publisher's
            // writes.
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
}

//! Versioned ids: stale-id detection (no kernel has it).
//!
//! With `BPF_F_REUSE_STACKID` a bucket's stack can be replaced at any time,
//! so an id counted now and looked up later may name another stack by then.
//! A [`StackRef`] pairs the id with the *version* of the element that held
//! the stack: [`lookup_versioned`](StackMapIn::lookup_versioned) copies the
//! stack only if bucket `id` still holds that very version, else `Stale`.
//!
//! # The version
//!
//! Every element (slot) already carries a sequence number that its writer
//! bumps by 2 on every rewrite (`protocol.rs`), and a slot only reaches a
//! bucket through a rewrite. So `(slot index, sequence number)` names one
//! stored stack: the version is the slot index in the high 32 bits and the
//! (even) sequence number in the low 32. A different slot with the same
//! sequence number is a different version; so is the same slot rewritten,
//! even with an equal stack (a delete then an equal insert gives `Stale`
//! for the old reference).
//!
//! **Wrap-around.** The sequence number is 32 bits and moves by 2 per
//! rewrite, so a slot's versions repeat every 2^31 rewrites of that slot. A
//! stale reference reads as current only if its slot was rewritten a
//! multiple of 2^31 times and is back in the same bucket; at a million
//! rewrites per second of one slot that is about 36 minutes of churn on
//! that slot alone between taking the reference and using it.
//!
//! # Why it is exact
//!
//! `observe` returns only reads that saw one even sequence number from
//! start to end, of a slot that sat in the bucket during the read. The
//! version is read inside that window, so it is the version of the stack
//! the read compared or copied. An inserter reads its own slot's version
//! after writing and before publishing, while no one else can write it.

use super::elem::Elem;
use super::protocol::{Cmp, Seen};
use super::StackMapIn;
use crate::sync::Ordering;
use crate::Error;

/// A stack id plus the version of the element that held the stack: what
/// [`StackMapIn::get_stackid_versioned`] returns and
/// [`StackMapIn::lookup_versioned`] checks.
///
/// Two references are equal exactly when they name the same stored stack
/// (the same insert), up to the wrap-around described on
/// [`lookup_versioned`](StackMapIn::lookup_versioned). `version` is opaque:
/// compare it, store it, but don't read meaning into its bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StackRef {
    /// The stack id, as [`StackMapIn::get_stackid`] returns it.
    pub id: u32,
    /// Which stored stack the id named when the reference was taken.
    pub version: u64,
}

/// The version of slot `slot` whose sequence number is `seq`.
pub(super) fn version(slot: u32, seq: u32) -> u64 {
    (u64::from(slot) << 32) | u64::from(seq)
}

/// The sequence number of `e`, read inside an `observe` window (or by the
/// slot's owner).
///
/// Relaxed: inside `observe` this load sits between the Acquire load of
/// the sequence number and its re-check; both saw the same value, and
/// coherence puts this load between them, so it returns that value too.
/// The owner of a slot reads its own last store.
pub(super) fn seq_of(e: &Elem<'_>) -> u32 {
    e.seq(Ordering::Relaxed)
}

/// Splits what a compare saw into the decision's input and the version of
/// the slot it compared with (0 when the bucket was empty).
pub(super) fn split(seen: Seen<(Cmp, u32)>) -> (Seen<Cmp>, u64) {
    match seen {
        Seen::Empty => (Seen::Empty, 0),
        // `b` is never 0 here: `observe` reports an empty bucket as Empty.
        Seen::Slot(b, (cmp, seq)) => (Seen::Slot(b, cmp), version(b.wrapping_sub(1), seq)),
    }
}

impl StackMapIn<'_> {
    /// [`get_stackid`](StackMapIn::get_stackid), plus the version of the
    /// element that holds the stack now: pass the [`StackRef`] to
    /// [`lookup_versioned`](StackMapIn::lookup_versioned) later to get this
    /// stack, or `Stale` if its bucket was given to another one meanwhile.
    ///
    /// The id, the errors and the map's state afterwards are exactly
    /// `get_stackid`'s. On success, at one moment during the call bucket
    /// `id` held the element version `r` names, containing this stack (or,
    /// with `BPF_F_FAST_STACK_CMP`, a stack with the same hash, as the id
    /// itself means then).
    ///
    /// ```
    /// use kstackmap::{trace_hash, uapi::BPF_F_REUSE_STACKID, Error, StackMap};
    ///
    /// # fn main() -> Result<(), Error> {
    /// // Room for 2 stacks of up to 4 frames: 2 buckets.
    /// let map = StackMap::with_capacity(2, 4)?;
    /// let a = map.get_stackid_versioned(0, &[0x1000], BPF_F_REUSE_STACKID)?;
    /// let mut value = [0u8; 32];
    /// map.lookup_versioned(a, &mut value)?; // still there
    ///
    /// // Another one-frame stack that hashes to the same bucket takes it
    /// // over (REUSE): the same id now names another stack, and `a` says so.
    /// let other = (0x1001u64..).find(|&ip| trace_hash(&[ip]) & 1 == a.id).unwrap();
    /// let b = map.get_stackid_versioned(0, &[other], BPF_F_REUSE_STACKID)?;
    /// assert_eq!(b.id, a.id);
    /// assert_eq!(map.lookup_versioned(a, &mut value), Err(Error::Stale));
    /// map.lookup_versioned(b, &mut value)?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`get_stackid`](StackMapIn::get_stackid): `Inval`, `Fault`,
    /// `Exist`, `NoMem`.
    pub fn get_stackid_versioned(
        &self,
        cpu: usize,
        callchain: &[u64],
        flags: u64,
    ) -> Result<StackRef, Error> {
        self.stackid(cpu, callchain, flags, None::<&dyn crate::VmaResolver>)
    }

    /// [`lookup`](StackMapIn::lookup) of the stack `r` names: copies it
    /// into `value` only if bucket `r.id` still holds the element version
    /// `r` was taken from. The check and the copy are one optimistic read,
    /// so a concurrent replace gives either this stack's bytes or `Stale`,
    /// never the new stack's bytes under the old reference.
    ///
    /// Versions repeat only after 2^31 rewrites of one element (see the
    /// module docs in `versioned.rs`): a reference kept across that much
    /// churn of its element may read as current again.
    ///
    /// On an error `value`'s contents are unspecified (a read that was
    /// retried may have copied into it).
    ///
    /// # Errors
    ///
    /// - `Stale`: bucket `r.id` is empty or holds another version: the stack
    ///   was deleted, or replaced (`BPF_F_REUSE_STACKID`), even if an equal
    ///   stack was stored again since; also for a version no call returned.
    /// - `NoEnt`: `r.id >= n_buckets` (no such bucket).
    /// - `Inval`: `value` is shorter than `value_size`.
    /// - `Perm`: the map is `BPF_F_WRONLY`.
    pub fn lookup_versioned(&self, r: StackRef, value: &mut [u8]) -> Result<(), Error> {
        self.may(true, false)?;
        let bucket = self.bucket(r.id).ok_or(Error::NoEnt)?;
        let value = self.value_buf(value)?;
        let slot = (r.version >> 32) as u32;
        let seq = r.version as u32;
        let want = self.elem(slot).ok_or(Error::Stale)?;
        let seen = self.observe(bucket, |e| {
            // The same slot (one element, one sequence word) at the same
            // version; only then copy.
            let same = e.is(&want) && seq_of(&e) == seq;
            if same {
                self.copy_out(e, value);
            }
            same
        });
        match seen {
            Seen::Slot(_, true) => Ok(()),
            Seen::Slot(_, false) | Seen::Empty => Err(Error::Stale),
        }
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::StackRef;
    use crate::uapi::{BPF_F_FAST_STACK_CMP, BPF_F_REUSE_STACKID, BPF_F_STACK_BUILD_ID};
    use crate::{trace_hash, Error, MapAttr, StackMap};

    fn map(max_entries: u32, map_flags: u32) -> StackMap {
        let value_size = if map_flags & BPF_F_STACK_BUILD_ID != 0 {
            64
        } else {
            32
        };
        let attr = MapAttr {
            max_entries,
            value_size,
            map_flags,
            ..MapAttr::default()
        };
        StackMap::new(&attr).unwrap()
    }

    /// A one-frame stack other than `[ip]` in the same bucket of `m`.
    fn collider(m: &StackMap, ip: u64) -> u64 {
        let mask = m.n_buckets() - 1;
        let id = trace_hash(&[ip]) & mask;
        (ip + 1..).find(|&x| trace_hash(&[x]) & mask == id).unwrap()
    }

    fn first(v: &[u8]) -> u64 {
        u64::from_ne_bytes(v[..8].try_into().unwrap())
    }

    #[test]
    fn hit_returns_the_same_ref() {
        for flags in [0, BPF_F_STACK_BUILD_ID] {
            let m = map(4, flags);
            let a = m.get_stackid_versioned(0, &[1, 2], 0).unwrap();
            assert_eq!(a.id, m.get_stackid(1, &[1, 2], 0).unwrap());
            assert_eq!(m.get_stackid_versioned(1, &[1, 2], 0), Ok(a));
            let mut v = [0u8; 64];
            assert_eq!(m.lookup_versioned(a, &mut v), Ok(()));
            let mut plain = [0u8; 64];
            m.lookup(a.id, &mut plain).unwrap();
            assert_eq!(v, plain);
        }
    }

    #[test]
    fn replace_makes_the_old_ref_stale() {
        let m = map(2, 0);
        let b_ip = collider(&m, 0x1000);
        let a = m
            .get_stackid_versioned(0, &[0x1000], BPF_F_REUSE_STACKID)
            .unwrap();
        let b = m
            .get_stackid_versioned(0, &[b_ip], BPF_F_REUSE_STACKID)
            .unwrap();
        assert_eq!(a.id, b.id);
        assert_ne!(a, b);
        let mut v = [0u8; 32];
        assert_eq!(m.lookup_versioned(a, &mut v), Err(Error::Stale));
        assert_eq!(m.lookup_versioned(b, &mut v), Ok(()));
        assert_eq!(first(&v), b_ip);
        // Back to `a`'s stack: an equal stack, but a new version.
        let a2 = m
            .get_stackid_versioned(0, &[0x1000], BPF_F_REUSE_STACKID)
            .unwrap();
        assert_ne!(a2, a);
        assert_eq!(m.lookup_versioned(a, &mut v), Err(Error::Stale));
        assert_eq!(m.lookup_versioned(b, &mut v), Err(Error::Stale));
        assert_eq!(m.lookup_versioned(a2, &mut v), Ok(()));
        assert_eq!(first(&v), 0x1000);
    }

    #[test]
    fn delete_then_equal_insert_is_stale() {
        // One element: the re-insert lands in the very same slot, so only
        // the sequence number tells the two versions apart.
        let m = map(1, 0);
        let a = m.get_stackid_versioned(0, &[7], 0).unwrap();
        m.delete(a.id).unwrap();
        let mut v = [0u8; 32];
        assert_eq!(m.lookup_versioned(a, &mut v), Err(Error::Stale));
        let a2 = m.get_stackid_versioned(0, &[7], 0).unwrap();
        assert_eq!(a2.id, a.id);
        assert_eq!(a2.version >> 32, a.version >> 32, "same slot");
        assert_ne!(a2, a);
        assert_eq!(m.lookup_versioned(a, &mut v), Err(Error::Stale));
        assert_eq!(m.lookup_versioned(a2, &mut v), Ok(()));
    }

    #[test]
    fn same_seq_in_another_slot_is_another_version() {
        // Two fresh slots, each written once: equal sequence numbers. `b`
        // replaces `a` in its bucket from the other slot.
        let m = map(2, 0);
        let b_ip = collider(&m, 0x1000);
        let a = m.get_stackid_versioned(0, &[0x1000], 0).unwrap();
        let b = m
            .get_stackid_versioned(0, &[b_ip], BPF_F_REUSE_STACKID)
            .unwrap();
        assert_eq!(b.id, a.id);
        assert_eq!(a.version as u32, b.version as u32, "same sequence number");
        assert_ne!(a.version >> 32, b.version >> 32, "other slot");
        let mut v = [0u8; 32];
        assert_eq!(m.lookup_versioned(a, &mut v), Err(Error::Stale));
        assert_eq!(m.lookup_versioned(b, &mut v), Ok(()));
    }

    #[test]
    fn fast_cmp_hit_names_the_stored_stack() {
        let m = map(4, 0);
        let a = m.get_stackid_versioned(0, &[3, 4], 0).unwrap();
        let f = m
            .get_stackid_versioned(0, &[3, 4], BPF_F_FAST_STACK_CMP)
            .unwrap();
        assert_eq!(f, a);
    }

    #[test]
    fn errors_are_get_stackids_and_lookups() {
        let m = map(1, 0);
        m.get_stackid_versioned(0, &[1], 0).unwrap();
        assert_eq!(m.get_stackid_versioned(0, &[2], 0), Err(Error::Exist));
        assert_eq!(m.get_stackid_versioned(0, &[2], 1 << 20), Err(Error::Inval));
        assert_eq!(m.get_stackid_versioned(0, &[2], 1), Err(Error::Fault));
        let r = StackRef { id: 0, version: 0 };
        let mut v = [0u8; 32];
        assert_eq!(m.lookup_versioned(r, &mut v), Err(Error::Stale));
        let far = StackRef { id: 5, version: 0 };
        assert_eq!(m.lookup_versioned(far, &mut v), Err(Error::NoEnt));
        let bad_slot = StackRef {
            id: 0,
            version: u64::MAX,
        };
        assert_eq!(m.lookup_versioned(bad_slot, &mut v), Err(Error::Stale));
        let good = m.get_stackid_versioned(0, &[1], 0).unwrap();
        assert_eq!(m.lookup_versioned(good, &mut v[..31]), Err(Error::Inval));
        let wo = map(1, crate::uapi::BPF_F_WRONLY);
        let r = wo.get_stackid_versioned(0, &[1], 0).unwrap();
        assert_eq!(wo.lookup_versioned(r, &mut v), Err(Error::Perm));
    }
}

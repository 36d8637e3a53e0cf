//! Conservation check: every slot in exactly one place (test and
//! debugging aid; allocates).

use super::StackMapIn;
use crate::sync::Ordering;

impl StackMapIn<'_> {
    /// Checks conservation: every slot is in exactly one bucket or on the
    /// freelist, none twice, none lost. `&mut self` makes it race-free (no
    /// thread is holding a slot). Returns `(slots in buckets, slots free)`.
    ///
    /// It drains the freelist and pushes the slots back spread over the
    /// CPUs, so the map behaves the same afterwards. Allocates a counter
    /// per slot: a test and debugging aid, not for the hot path.
    ///
    /// # Errors
    ///
    /// The first broken invariant found: a slot in two places
    /// ([`AuditError::Twice`]), an index out of range
    /// ([`AuditError::OutOfRange`]), or a slot in no place
    /// ([`AuditError::Lost`]).
    #[cfg(feature = "alloc")]
    #[cfg_attr(docsrs, doc(cfg(feature = "alloc")))]
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
#[cfg_attr(docsrs, doc(cfg(feature = "alloc")))]
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

#[cfg(feature = "alloc")]
impl core::fmt::Display for AuditError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AuditError::Twice(slot) => write!(f, "slot {slot} is in two places"),
            AuditError::Lost(slot) => write!(f, "slot {slot} is in no bucket and not free"),
            AuditError::OutOfRange(slot) => {
                write!(f, "slot index {slot} is out of range (>= max_entries)")
            }
        }
    }
}

#[cfg(feature = "alloc")]
impl core::error::Error for AuditError {}

#[cfg(all(test, feature = "std"))]
mod tests {
    extern crate std;
    use super::AuditError;
    use std::string::ToString;

    #[test]
    fn audit_error_is_an_error_that_names_the_slot() {
        let e: &dyn core::error::Error = &AuditError::Twice(3);
        assert_eq!(e.to_string(), "slot 3 is in two places");
        assert!(AuditError::Lost(7).to_string().contains("slot 7"));
        assert!(AuditError::OutOfRange(9).to_string().contains("9"));
    }
}

//! loom models of the depot's protocol (src/depot/index.rs): publish by
//! one CAS, the compare after a lost CAS, the published bit that `get`
//! reads, and the reservation cursors with their give-back.
//!
//! The arena's words are plain memory; under loom each word is tracked by
//! a `loom::cell::UnsafeCell` (src/sync.rs, `Track`), so a read of a record
//! that is not ordered after its write fails the model as a causality
//! violation. Every model ends with conservation: with nothing in flight,
//! arena words used = stored records + wasted, ids used = stacks + wasted.
//!
//! Each model is known to fail for the mutants listed against it in
//! `scripts/loom-mutants.d/depot.txt`.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p loom-tests --release --test depot
//! ```
#![cfg(loom)]

use kstackmap::{DepotConfig, DepotStats, Error, StackDepot};
use loom::sync::Arc;
use loom_tests::{model, race};

fn depot(capacity: u32, arena_words: usize) -> StackDepot {
    let cfg = DepotConfig {
        capacity,
        arena_words,
        nr_cpus: 2,
        seed: 1,
    };
    StackDepot::new(&cfg).unwrap()
}

/// Conservation, with nothing in flight.
fn conserved(d: &StackDepot) -> DepotStats {
    let s = d.stats();
    assert_eq!(s.words_used, s.record_words + s.wasted_words, "{s:?}");
    assert_eq!(s.ids_used as usize, s.stacks + s.wasted_ids, "{s:?}");
    let words: usize = d.iter().map(|(_, w)| w.len() + 1).sum();
    assert_eq!(words, s.record_words, "{s:?}");
    s
}

/// Two threads intern the same stack: both get one id. The first thread
/// then interns another stack, which reuses the words and id a losing
/// second thread gave back (the cursors' Acquire/Release pairs order the
/// loser's writes before the reuser's).
#[test]
fn two_inserters_same_stack() {
    let s = [0x10u64, 0x20];
    let s2 = [0x30u64, 0x40, 0x50];
    model("two_inserters_same_stack", move || {
        let d = Arc::new(depot(3, 16));
        let ((a, a2), b) = race(
            &d,
            move |d| {
                let a = d.intern(0, &s).unwrap();
                (a, d.intern(0, &s2).unwrap())
            },
            move |d| d.intern(1, &s).unwrap(),
        );
        assert_eq!(a, b, "one id for one stack");
        assert_ne!(a, a2);
        assert!(a < 3 && a2 < 3);
        assert_eq!(d.get(a), Some(&s[..]));
        assert_eq!(d.get(a2), Some(&s2[..]));
        let st = conserved(&d);
        assert_eq!(st.stacks, 2);
        // Sequentially, both are found again and nothing changes.
        assert_eq!(d.intern(1, &s), Ok(a));
        assert_eq!(d.intern(0, &s2), Ok(a2));
        assert_eq!(d.stats(), st);
    });
}

/// Two different stacks with the same hash (the test hook makes every
/// hash 0: one probe run, one tag) race for the same slot: both land, with
/// different ids, and each id reads back its own stack.
#[test]
fn colliding_stacks_distinct_ids() {
    let a = [0x1u64, 0x2];
    let b = [0x1u64, 0x3];
    model("colliding_stacks_distinct_ids", move || {
        let mut d = depot(2, 8);
        d.force_hash_collisions();
        let d = Arc::new(d);
        let (ia, ib) = race(
            &d,
            move |d| d.intern(0, &a).unwrap(),
            move |d| d.intern(1, &b).unwrap(),
        );
        assert_ne!(ia, ib, "different stacks, different ids");
        assert_eq!(d.get(ia), Some(&a[..]));
        assert_eq!(d.get(ib), Some(&b[..]));
        assert_eq!(d.intern(0, &a), Ok(ia));
        assert_eq!(d.intern(0, &b), Ok(ib));
        let st = conserved(&d);
        assert_eq!(st.stacks, 2);
        assert_eq!(st.lost_races, 0);
    });
}

/// `get` racing `intern` sees nothing or the whole record, never a partial
/// one; a second interner that finds the stack before its winner set the
/// published bit sets it, so the id it returns is one `get` hands out.
#[test]
fn get_races_intern() {
    let s = [0xaau64, 0xbb, 0xcc];
    model("get_races_intern", move || {
        let d = Arc::new(depot(2, 8));
        let (a, (seen, b)) = race(
            &d,
            move |d| d.intern(0, &s).unwrap(),
            move |d| {
                let seen = d.get(0).map(<[u64]>::to_vec);
                let b = d.intern(1, &s).unwrap();
                assert_eq!(d.get(b), Some(&s[..]), "an id intern returned is readable");
                (seen, b)
            },
        );
        if let Some(v) = seen {
            assert_eq!(v, s, "a whole record");
        }
        // Whoever published first named the stack; with two ids taken the
        // other thread's id was given back (or wasted).
        assert_eq!(a, b, "one id for one stack");
        assert_eq!(d.get(a), Some(&s[..]));
        let st = conserved(&d);
        assert_eq!(st.stacks, 1);
    });
}

/// A depot with one id: of two new stacks one gets id 0, the other
/// `NoMem`; afterwards the stored stack is still found and refusing a new
/// one changes nothing.
#[test]
fn full_depot() {
    let a = [0x1u64];
    let b = [0x2u64];
    model("full_depot", move || {
        let d = Arc::new(depot(1, 4));
        let (ra, rb) = race(&d, move |d| d.intern(0, &a), move |d| d.intern(1, &b));
        let (won, lost) = match (ra, rb) {
            (Ok(0), Err(Error::NoMem)) => (a, b),
            (Err(Error::NoMem), Ok(0)) => (b, a),
            other => panic!("{other:?}"),
        };
        assert_eq!(d.get(0), Some(&won[..]));
        assert_eq!(d.get(1), None);
        let st = conserved(&d);
        assert_eq!((st.stacks, st.ids_used), (1, 1));
        assert_eq!(d.intern(0, &won), Ok(0), "still found");
        assert_eq!(d.intern(0, &lost), Err(Error::NoMem));
        assert_eq!(d.intern(1, &[7, 8]), Err(Error::NoMem));
        assert_eq!(d.stats(), st, "nothing changed");
    });
}

/// A depot whose arena holds one record: of two new stacks one is stored,
/// the other gets `NoMem`, and the refused reservation leaves no trace.
#[test]
fn full_arena() {
    let a = [0x1u64, 0x2];
    let b = [0x3u64, 0x4];
    model("full_arena", move || {
        let d = Arc::new(depot(4, 5));
        let (ra, rb) = race(&d, move |d| d.intern(0, &a), move |d| d.intern(1, &b));
        let (id, won) = match (ra, rb) {
            (Ok(id), Err(Error::NoMem)) => (id, a),
            (Err(Error::NoMem), Ok(id)) => (id, b),
            other => panic!("{other:?}"),
        };
        assert_eq!(d.get(id), Some(&won[..]));
        let st = conserved(&d);
        assert_eq!(st.stacks, 1);
        assert_eq!(d.intern(0, &won), Ok(id));
        assert_eq!(
            d.intern(0, &[9]),
            Ok(id + 1),
            "one 2-word record still fits"
        );
    });
}

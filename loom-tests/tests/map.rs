//! loom models of the map's protocols: publish (swap / compare-exchange),
//! the optimistic read (`observe`: lookup and the get_stackid compare),
//! delete, versioned lookups (stale-id detection), and the freelist round
//! trip behind them.
//!
//! Every model ends with conservation: `StackMap::audit` finds each slot in
//! exactly one place (a bucket or the freelist).
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p loom-tests --release --test map
//! ```
#![cfg(loom)]

use std::sync::atomic::Ordering::SeqCst;

use kstackmap::uapi::{BPF_F_REUSE_STACKID, BPF_F_STACK_BUILD_ID};
use kstackmap::{trace_hash, Error, MapAttr, StackMap};
use loom::sync::atomic::AtomicBool;
use loom::sync::Arc;
use loom_tests::{model, race};

/// A 2-element, 2-bucket ips map with 2-frame values.
fn small_map() -> StackMap {
    let attr = MapAttr {
        max_entries: 2,
        key_size: 4,
        value_size: 16,
        map_flags: 0,
        numa_node: 0,
    };
    StackMap::new(&attr).unwrap()
}

/// Two distinct one-frame stacks in the same bucket of a 2-bucket map.
fn colliding() -> ([u64; 1], [u64; 1], u32) {
    let a = [0x1000u64];
    let id = trace_hash(&a) & 1;
    let b = (0x1001u64..)
        .map(|x| [x])
        .find(|s| trace_hash(s) & 1 == id)
        .unwrap();
    (a, b, id)
}

fn read(map: &StackMap, id: u32) -> Result<[u64; 2], Error> {
    let mut v = [0u8; 16];
    map.lookup(id, &mut v)?;
    Ok([
        u64::from_ne_bytes(v[..8].try_into().unwrap()),
        u64::from_ne_bytes(v[8..].try_into().unwrap()),
    ])
}

fn audit(map: StackMap) -> (usize, usize) {
    let mut map = map;
    map.audit()
        .expect("conservation: every slot in exactly one place")
}

fn into_inner(map: Arc<StackMap>) -> StackMap {
    Arc::try_unwrap(map).unwrap_or_else(|_| panic!("threads joined"))
}

#[test]
fn two_inserters_no_reuse() {
    let (a, b, id) = colliding();
    model("two_inserters_no_reuse", move || {
        let map = Arc::new(small_map());
        let (ra, rb) = race(
            &map,
            move |m| m.get_stackid(0, &a, 0),
            move |m| m.get_stackid(0, &b, 0),
        );
        // Exactly one wins; the loser sees the winner's stack: EEXIST. No
        // insert is thrown away (the kernel's xchg could lose one).
        let winner = match (ra, rb) {
            (Ok(_), Err(Error::Exist)) => a,
            (Err(Error::Exist), Ok(_)) => b,
            other => panic!("{other:?}"),
        };
        assert_eq!(read(&map, id), Ok([winner[0], 0]));
        let map = into_inner(map);
        assert_eq!(audit(map), (1, 1));
    });
}

#[test]
fn two_inserters_reuse() {
    let (a, b, id) = colliding();
    model("two_inserters_reuse", move || {
        let map = Arc::new(small_map());
        let (ra, rb) = race(
            &map,
            move |m| m.get_stackid(1, &a, BPF_F_REUSE_STACKID),
            move |m| m.get_stackid(0, &b, BPF_F_REUSE_STACKID),
        );
        assert_eq!((ra, rb), (Ok(id), Ok(id)));
        let got = read(&map, id).unwrap();
        assert!(got == [a[0], 0] || got == [b[0], 0], "{got:?}");
        let map = into_inner(map);
        assert_eq!(audit(map), (1, 1));
    });
}

#[test]
fn insert_vs_lookup() {
    let stack = [0x10u64, 0x20];
    let id = trace_hash(&stack) & 1;
    model("insert_vs_lookup", move || {
        let map = Arc::new(small_map());
        let (ins, seen) = race(
            &map,
            move |m| m.get_stackid(0, &stack, 0),
            move |m| read(m, id),
        );
        // The reader sees nothing or the whole stack, never a torn one.
        match seen {
            Err(Error::NoEnt) => {}
            Ok(v) => assert_eq!(v, stack),
            Err(e) => panic!("{e:?}"),
        }
        assert_eq!(ins, Ok(id));
        // The insert is never lost (the kernel's swap-out read can lose it)
        // and the inserter's id names its stack.
        assert_eq!(read(&map, id), Ok(stack));
        let map = into_inner(map);
        assert_eq!(audit(map), (1, 1));
    });
}

#[test]
fn insert_vs_delete() {
    let (a, b, id) = colliding();
    model("insert_vs_delete", move || {
        let map = Arc::new(small_map());
        map.get_stackid(0, &b, 0).unwrap();
        let (ins, rd) = race(
            &map,
            move |m| m.get_stackid(0, &a, BPF_F_REUSE_STACKID),
            move |m| m.delete(id),
        );
        assert_eq!(ins, Ok(id));
        // Delete removed b (before the insert) or a (after it).
        assert_eq!(rd, Ok(()));
        let left = read(&map, id);
        assert!(
            left == Err(Error::NoEnt) || left == Ok([a[0], 0]),
            "{left:?}"
        );
        let map = into_inner(map);
        let (used, free) = audit(map);
        assert_eq!((used + free, used), (2, usize::from(left.is_ok())));
    });
}

/// The seqlock guarantee for lookups: a reader racing with the recycling
/// of the slot it is reading (the same slot republished in the same
/// bucket, so only the sequence number tells) sees one whole stack, never
/// a mixture of two. (The compare's side of the guarantee is
/// `compare_vs_unpublished_write`.)
#[test]
fn compare_and_read_vs_recycle() {
    let old = [0x1u64, 0x2];
    let id = trace_hash(&old) & 1;
    // A second stack for the same bucket, and a third for the recycle.
    let new = (3u64..)
        .map(|x| [x, x + 1])
        .find(|s| trace_hash(s) & 1 == id)
        .unwrap();
    model("compare_and_read_vs_recycle", move || {
        let map = Arc::new(small_map());
        map.get_stackid(0, &old, 0).unwrap();
        // Replace `old` by `new`: pops the free slot, publishes it, pushes
        // old's slot; then delete and insert `old` again, which rewrites a
        // recycled slot while the reader may be reading it.
        let writer = move |m: &StackMap| {
            assert_eq!(m.get_stackid(0, &new, BPF_F_REUSE_STACKID), Ok(id));
            assert_eq!(m.delete(id), Ok(()));
            assert_eq!(m.get_stackid(0, &old, 0), Ok(id));
        };
        let ((), seen) = race(&map, writer, move |m| read(m, id));
        match seen {
            Ok(v) => assert!(v == old || v == new, "torn read {v:?}"),
            Err(e) => assert_eq!(e, Error::NoEnt),
        }
        assert_eq!(read(&map, id), Ok(old));
        let map = into_inner(map);
        assert_eq!(audit(map), (1, 1));
    });
}

/// A compare racing a replace: a hit on `old` is only reported while `old`
/// is in the bucket. The checker reads a witness first: if the replace had
/// already returned, `old` was gone for the whole call and only EEXIST is
/// right.
#[test]
fn compare_vs_replace() {
    let old = [0x1u64, 0x2];
    let id = trace_hash(&old) & 1;
    let new = (3u64..)
        .map(|x| [x, x + 1])
        .find(|s| trace_hash(s) & 1 == id)
        .unwrap();
    model("compare_vs_replace", move || {
        let map = Arc::new(small_map());
        map.get_stackid(0, &old, 0).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let seen_done = done.clone();
        let (rep, (replaced_before, r)) = race(
            &map,
            move |m| {
                let r = m.get_stackid(0, &new, BPF_F_REUSE_STACKID);
                done.store(true, SeqCst);
                r
            },
            move |m| (seen_done.load(SeqCst), m.get_stackid(0, &old, 0)),
        );
        // A hit on `old` is only reported while `old` is in the bucket;
        // after the replace it is EEXIST.
        assert!(r == Ok(id) || r == Err(Error::Exist), "{r:?}");
        if replaced_before {
            assert_eq!(
                r,
                Err(Error::Exist),
                "hit on a stack replaced before the call"
            );
        }
        assert_eq!(rep, Ok(id));
        assert_eq!(read(&map, id), Ok(new));
        let map = into_inner(map);
        assert_eq!(audit(map), (1, 1));
    });
}

/// The bucket re-check: a slot read through bucket X that is recycled
/// into bucket Y meanwhile must not be reported as X's stack, even when
/// the reader sees one whole, stable version of it.
#[test]
fn read_vs_move_to_other_bucket() {
    let a = [0x10u64, 0x20];
    let x = trace_hash(&a) & 1;
    let c = (0x30u64..)
        .map(|v| [v, v + 1])
        .find(|s| trace_hash(s) & 1 != x)
        .unwrap();
    model("read_vs_move_to_other_bucket", move || {
        let map = Arc::new(small_map());
        map.get_stackid(0, &a, 0).unwrap();
        // Delete frees a's slot; the insert of c pops it again (LIFO) and
        // publishes it in the other bucket.
        let mover = move |m: &StackMap| {
            assert_eq!(m.delete(x), Ok(()));
            assert_eq!(m.get_stackid(0, &c, 0), Ok(x ^ 1));
        };
        let ((), seen) = race(&map, mover, move |m| read(m, x));
        assert!(
            seen == Ok(a) || seen == Err(Error::NoEnt),
            "bucket {x} read as {seen:?}"
        );
        let map = into_inner(map);
        assert_eq!(audit(map), (1, 1));
    });
}

/// lookup_and_delete racing an insert into the same bucket: the taker
/// gets a whole stack (the old one or the new one) or ENOENT, and every
/// slot ends in exactly one place.
#[test]
fn lookup_and_delete_vs_insert() {
    let (a, b, id) = colliding();
    model("lookup_and_delete_vs_insert", move || {
        let map = Arc::new(small_map());
        map.get_stackid(0, &b, 0).unwrap();
        let take = move |m: &StackMap| {
            let mut v = [0u8; 16];
            m.lookup_and_delete(id, &mut v)
                .map(|()| u64::from_ne_bytes(v[..8].try_into().unwrap()))
        };
        let (ins, took) = race(
            &map,
            move |m| m.get_stackid(1, &a, BPF_F_REUSE_STACKID),
            take,
        );
        assert_eq!(ins, Ok(id));
        assert!(took == Ok(a[0]) || took == Ok(b[0]), "{took:?}");
        // If b was taken, a is stored; if a was taken, the bucket is empty.
        let left = read(&map, id);
        match took {
            Ok(x) if x == b[0] => assert_eq!(left, Ok([a[0], 0])),
            _ => assert_eq!(left, Err(Error::NoEnt)),
        }
        let (used, free) = audit(into_inner(map));
        assert_eq!((used + free, used), (2, usize::from(left.is_ok())));
    });
}

/// lookup_and_delete racing an insert into an empty bucket (publish by
/// compare-exchange): the taker gets ENOENT or the whole new stack. Its
/// copy is not re-validated (the slot is the taker's once swapped out),
/// so it relies on the publish's Release for the stack's words.
#[test]
fn lookup_and_delete_vs_fresh_insert() {
    let a = [0x10u64, 0x20];
    let id = trace_hash(&a) & 1;
    model("lookup_and_delete_vs_fresh_insert", move || {
        let map = Arc::new(small_map());
        let take = move |m: &StackMap| {
            let mut v = [0u8; 16];
            m.lookup_and_delete(id, &mut v).map(|()| {
                [
                    u64::from_ne_bytes(v[..8].try_into().unwrap()),
                    u64::from_ne_bytes(v[8..].try_into().unwrap()),
                ]
            })
        };
        let (ins, took) = race(&map, move |m| m.get_stackid(0, &a, 0), take);
        assert_eq!(ins, Ok(id));
        let left = read(&map, id);
        match took {
            Ok(v) => {
                assert_eq!(v, a, "took a stale or torn stack");
                assert_eq!(left, Err(Error::NoEnt));
            }
            Err(e) => {
                assert_eq!(e, Error::NoEnt);
                assert_eq!(left, Ok(a));
            }
        }
        let (used, free) = audit(into_inner(map));
        assert_eq!((used + free, used), (2, usize::from(left.is_ok())));
    });
}

/// A 3-element build-id map with one-frame values (32 bytes).
fn build_id_map() -> StackMap {
    let attr = MapAttr {
        max_entries: 3,
        key_size: 4,
        value_size: 32,
        map_flags: BPF_F_STACK_BUILD_ID,
        numa_node: 0,
    };
    StackMap::new(&attr).unwrap()
}

/// The hit guarantee where a kernel-style compare (one bucket load and a
/// plain compare of the slot, nothing re-checked) fails. Build-id maps
/// write the caller's stack into a slot *before* comparing (the kernel's
/// order), so a stack can sit in a slot without ever being published.
///
/// X is in the bucket (slot s). The writer replaces X by Z (REUSE: s goes
/// back to the freelist), then asks for Y: it pops s, writes Y into it,
/// compares with Z, gets EEXIST and pushes s back: Y was never in the
/// bucket. The reader asks for Y at the same time. A compare that loaded
/// the bucket (s, holding X) and then read s after the writer wrote Y
/// would report a hit for a stack the bucket never held; the sequence
/// number and the bucket re-check refuse it. Every right answer is EEXIST.
#[test]
fn compare_vs_unpublished_write() {
    let x = [0x1000u64];
    let n_buckets = 4;
    let id = trace_hash(&x) & (n_buckets - 1);
    let mut same_bucket = (0x1001u64..)
        .map(|v| [v])
        .filter(|s| trace_hash(s) & (n_buckets - 1) == id);
    let (y, z) = (same_bucket.next().unwrap(), same_bucket.next().unwrap());
    model("compare_vs_unpublished_write", move || {
        let map = Arc::new(build_id_map());
        assert_eq!(map.n_buckets(), n_buckets);
        assert_eq!(map.get_stackid(0, &x, 0), Ok(id));
        let (w, r) = race(
            &map,
            move |m| {
                assert_eq!(m.get_stackid(0, &z, BPF_F_REUSE_STACKID), Ok(id));
                m.get_stackid(0, &y, 0)
            },
            move |m| m.get_stackid(0, &y, 0),
        );
        assert_eq!(w, Err(Error::Exist));
        assert_eq!(r, Err(Error::Exist), "hit on a stack the bucket never held");
        let mut v = [0u8; 32];
        map.lookup(id, &mut v).unwrap();
        // StackBuildId: status at 0 (IP = 2), the ip at byte 24.
        assert_eq!(u64::from_ne_bytes(v[24..].try_into().unwrap()), z[0]);
        assert_eq!(audit(into_inner(map)), (1, 2));
    });
}

/// Versioned ids: a replace racing a versioned lookup. The reader holds a
/// `StackRef` to `a`; the writer replaces `a` by `b` (another slot, the
/// same sequence number) and then `b` by `c` (`a`'s slot, recycled: the
/// same slot, a new sequence number). The lookup returns `a`'s bytes or
/// `Stale`, never `b` or `c` under `a`'s ref; a versioned hit on `a` names
/// `a`'s own version.
#[test]
fn versioned_lookup_vs_replace() {
    let (a, b, id) = colliding();
    let c = (b[0] + 1..)
        .map(|x| [x])
        .find(|s| trace_hash(s) & 1 == id)
        .unwrap();
    model("versioned_lookup_vs_replace", move || {
        let map = Arc::new(small_map());
        let ra = map.get_stackid_versioned(0, &a, 0).unwrap();
        let writer = move |m: &StackMap| {
            let rb = m.get_stackid_versioned(0, &b, BPF_F_REUSE_STACKID);
            let rc = m.get_stackid_versioned(0, &c, BPF_F_REUSE_STACKID);
            (rb.unwrap(), rc.unwrap())
        };
        let reader = move |m: &StackMap| {
            let hit = m.get_stackid_versioned(1, &a, 0);
            let mut v = [0u8; 16];
            let seen = m
                .lookup_versioned(ra, &mut v)
                .map(|()| u64::from_ne_bytes(v[..8].try_into().unwrap()));
            (hit, seen)
        };
        let ((rb, rc), (hit, seen)) = race(&map, writer, reader);
        // A hit names a's own store; after the replace a is refused.
        assert!(hit == Ok(ra) || hit == Err(Error::Exist), "{hit:?}");
        assert!(seen == Ok(a[0]) || seen == Err(Error::Stale), "{seen:?}");
        assert_eq!((rb.id, rc.id), (id, id));
        let mut v = [0u8; 16];
        assert_eq!(map.lookup_versioned(ra, &mut v), Err(Error::Stale));
        assert_eq!(map.lookup_versioned(rb, &mut v), Err(Error::Stale));
        assert_eq!(map.lookup_versioned(rc, &mut v), Ok(()));
        assert_eq!(v[..8], c[0].to_ne_bytes());
        let map = into_inner(map);
        assert_eq!(audit(map), (1, 1));
    });
}

//! loom models of the map's hit cache (`src/map/cache.rs`) and of the
//! element layout it reads (`src/map/elem.rs`): an entry that names a slot
//! which was replaced out of its bucket, recycled and rewritten under the
//! probe, moved to another bucket, or is forged (what a torn or stale
//! entry amounts to) must never change a result.
//!
//! Every model asserts only outcomes a sequential kernel map could give
//! for some order of the racing calls, and ends with conservation.
//! `scripts/loom-mutants.d/cache.txt` lists the one-line mutants of the
//! cache that these models catch.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p loom-tests --release --test cache
//! ```
#![cfg(loom)]

use kstackmap::uapi::BPF_F_REUSE_STACKID;
use kstackmap::{trace_hash, Error, MapAttr, StackMap};
use loom::sync::atomic::{AtomicBool, Ordering::SeqCst};
use loom::sync::Arc;
use loom_tests::{model, race};

/// An ips map of `max_entries` 2-frame stacks, one CPU.
fn map(max_entries: u32) -> StackMap {
    let attr = MapAttr {
        max_entries,
        key_size: 4,
        value_size: 16,
        map_flags: 0,
        numa_node: 0,
    };
    StackMap::new(&attr).unwrap()
}

/// The bucket of a 2-frame stack in a map of `n_buckets`.
fn bucket(s: [u64; 2], n_buckets: u32) -> u32 {
    trace_hash(&s) & (n_buckets - 1)
}

/// The first 2-frame stack after `from` (in steps of 0x10) in bucket `b`.
fn stack_in(b: u32, n_buckets: u32, from: u64) -> [u64; 2] {
    (from..)
        .map(|x| [x * 0x10, x * 0x10 + 8])
        .find(|&s| bucket(s, n_buckets) == b)
        .unwrap()
}

fn read(map: &StackMap, id: u32) -> Result<[u64; 2], Error> {
    let mut v = [0u8; 16];
    map.lookup(id, &mut v)?;
    Ok([
        u64::from_ne_bytes(v[..8].try_into().unwrap()),
        u64::from_ne_bytes(v[8..].try_into().unwrap()),
    ])
}

fn audit(map: Arc<StackMap>) -> (usize, usize) {
    let mut map = Arc::try_unwrap(map).expect("threads joined");
    map.audit()
        .expect("conservation: every slot in exactly one place")
}

/// An entry naming a slot whose stack was replaced out of its bucket, the
/// slot still intact on the freelist: a probe must not call that a hit.
/// Once the replace is known to be done, the kernel says EEXIST. (The
/// replacer's own refresh evicts A's entry, stale now, from the set; a
/// late refresh by a thread that found A before the replace could write it
/// back. The writer does that write itself, with the test hook.)
#[test]
fn cache_hit_vs_replace() {
    let a = [0x1000u64, 0x1008];
    let x = bucket(a, 2);
    let c = stack_in(x, 2, 0x200);
    model("cache_hit_vs_replace", move || {
        let map = Arc::new(map(2));
        assert_eq!(map.get_stackid(0, &a, 0), Ok(x)); // entry(a) = a's slot
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let (after, r) = race(
            &map,
            move |m| {
                assert_eq!(m.get_stackid(0, &c, BPF_F_REUSE_STACKID), Ok(x));
                // A was in slot 1 (the top of the populated freelist).
                m.cache_forge(&a, 1, x);
                d.store(true, SeqCst);
            },
            move |m| {
                let after = done.load(SeqCst);
                (after, m.get_stackid(0, &a, 0))
            },
        )
        .1;
        if after {
            assert_eq!(r, Err(Error::Exist), "a was replaced before the call");
        } else {
            assert!(r == Ok(x) || r == Err(Error::Exist), "{r:?}");
        }
        assert_eq!(read(&map, x), Ok(c));
        assert_eq!(audit(map), (1, 1));
    });
}

/// The slot an entry names is recycled and rewritten (with another stack
/// of the same depth, for another bucket) while the probe reads it: a read
/// that mixes the two versions must not lend the new stack's hash to the
/// old frames (which would send them to the wrong bucket). Slot 2 holds Z,
/// then A, then E; the probe of A races with A's replacement and E's write.
#[test]
fn cache_probe_vs_rewrite() {
    // 3 slots, 4 buckets: A and C share x; P, Q, E and Z have their own.
    let a = [0x1000u64, 0x1008];
    let x = bucket(a, 4);
    let c = stack_in(x, 4, 0x300);
    let p = stack_in((x + 1) % 4, 4, 0x400);
    let q = stack_in((x + 2) % 4, 4, 0x500);
    let e = stack_in((x + 3) % 4, 4, 0x600);
    let z = stack_in((x + 3) % 4, 4, 0x700);
    let (bp, bq, be) = (bucket(p, 4), bucket(q, 4), bucket(e, 4));
    model("cache_probe_vs_rewrite", move || {
        let map = Arc::new(map(3));
        // Slots 2, 1, 0 go to Z, P, Q; Z's slot (the only free one) then
        // takes A, so slot 2 has held Z and A, both 2 frames deep.
        assert_eq!(map.get_stackid(0, &z, 0), Ok(be));
        assert_eq!(map.get_stackid(0, &p, 0), Ok(bp));
        assert_eq!(map.get_stackid(0, &q, 0), Ok(bq));
        assert_eq!(map.delete(be), Ok(()));
        assert_eq!(map.get_stackid(0, &a, 0), Ok(x));
        let writer = move |m: &StackMap| {
            assert_eq!(m.delete(bq), Ok(())); // frees slot 0
                                              // C takes slot 0 and frees A's slot 2, which E then rewrites.
            assert_eq!(m.get_stackid(0, &c, BPF_F_REUSE_STACKID), Ok(x));
            assert_eq!(m.get_stackid(0, &e, 0), Ok(be));
        };
        // Flags 0: A is found in x (before C) or collides with C (after).
        let ((), r) = race(&map, writer, move |m| m.get_stackid(0, &a, 0));
        assert!(r == Ok(x) || r == Err(Error::Exist), "{r:?}");
        assert_eq!(read(&map, x), Ok(c));
        assert_eq!(read(&map, be), Ok(e));
        assert_eq!(audit(map), (3, 0));
    });
}

/// Pushing a slot on the freelist rewrites the header word that holds its
/// sequence number (with 64-bit words, seq and link share one): a probe
/// whose sequence load reads that store must still see the slot's last
/// version whole. In the writer, slot 0 holds Z, then A, then goes back
/// to the freelist; a prober with no happens-before edge to any of it
/// must not pair A's frames with Z's hash (Z's bucket is not A's).
#[test]
fn cache_probe_vs_link_store() {
    // 2 slots, 2 buckets: P and Z share one bucket, A has the other.
    let a = [0x1000u64, 0x1008];
    let x = bucket(a, 2);
    let p = stack_in(x ^ 1, 2, 0x300);
    let z = stack_in(x ^ 1, 2, 0x400);
    model("cache_probe_vs_link_store", move || {
        let map = Arc::new(map(2));
        assert_eq!(map.get_stackid(0, &p, 0), Ok(x ^ 1)); // slot 1
        let writer = move |m: &StackMap| {
            // Z replaces P (Z in slot 0, unless the prober took it first:
            // then NoMem); then the bucket is emptied.
            let rz = m.get_stackid(0, &z, BPF_F_REUSE_STACKID);
            assert!(rz == Ok(x ^ 1) || rz == Err(Error::NoMem), "{rz:?}");
            assert_eq!(m.delete(x ^ 1), Ok(()));
            // A takes Z's slot (refreshing its entry) and leaves again.
            assert_eq!(m.get_stackid(0, &a, 0), Ok(x));
            assert_eq!(m.delete(x), Ok(()));
        };
        let ((), r) = race(&map, writer, move |m| m.get_stackid(0, &a, 0));
        // A is found or stored in x (or finds no free slot: the prober
        // may see an old freelist); never in x ^ 1.
        assert!(r == Ok(x) || r == Err(Error::NoMem), "{r:?}");
        let left = read(&map, x);
        assert!(left == Ok(a) || left == Err(Error::NoEnt), "{left:?}");
        assert_eq!(read(&map, x ^ 1), Err(Error::NoEnt));
        let (used, free) = audit(map);
        assert_eq!((used, free), (usize::from(left.is_ok()), 2 - used));
    });
}

/// An entry can hold any value: stale, overwritten by a racing refresh,
/// or torn (an entry is one word, so "torn" is just another value). Each
/// forged value (every slot and one past them, each with A's bucket, B's
/// or none, and A's check bits) leaves every result as it would be: A's
/// id, while a writer replaces the stack in the slot the entry names.
#[test]
fn cache_forged_entry() {
    // 3 slots, 4 buckets: A in x, B and B2 in y, A's first frame alone in
    // a third bucket.
    let (a, x, short, bs) = (0x100u64..)
        .map(|k| {
            let a = [k * 0x10, k * 0x10 + 8];
            let short = [a[0]];
            (a, bucket(a, 4), short, trace_hash(&short) & 3)
        })
        .find(|&(_, x, _, bs)| bs != x && bs != (x + 1) % 4)
        .unwrap();
    let y = (x + 1) % 4;
    let b = stack_in(y, 4, 0x300);
    let b2 = stack_in(y, 4, 0x400);
    // Every slot and one past them, naming A's bucket, B's, or none.
    for (slot, id) in (0..4).flat_map(|slot| [x, y, 4].map(|id| (slot, id))) {
        model("cache_forged_entry", move || {
            let map = Arc::new(map(3));
            assert_eq!(map.get_stackid(0, &a, 0), Ok(x));
            assert_eq!(map.get_stackid(0, &b, 0), Ok(y));
            map.cache_forge(&a, slot, id);
            let (r, w) = race(
                &map,
                move |m| m.get_stackid(0, &a, 0),
                move |m| m.get_stackid(0, &b2, BPF_F_REUSE_STACKID),
            );
            assert_eq!((r, w), (Ok(x), Ok(y)), "entry forged to {slot}, {id}");
            assert_eq!(read(&map, x), Ok(a));
            assert_eq!(read(&map, y), Ok(b2));
            // A shorter stack whose frames start A's, its entry naming the
            // slot that holds A: the lengths differ, so it is not A.
            map.cache_forge(&short, slot, id);
            assert_eq!(map.get_stackid(0, &short, 0), Ok(bs));
            assert_eq!(audit(map), (3, 0));
        });
    }
}

//! The ABA regression of the audit (issue 16), end to end through the map.
//!
//! One `get_stackid` is stalled inside its freelist pop (after it read the
//! head `{t, A}` and A's link `B`, before its swap), as an interrupt handler
//! on the same CPU would stall it, while the "handler" runs the shortest
//! history that can fool that pop: insert X1 (pops A), insert X2 (pops B),
//! delete X1 (pushes A back, now above what was below B), then `2^k - 2`
//! times insert X1 / delete X1. That is `2^k` pops of the one shard.
//!
//! With `k` = 16 this is what fooled the old layout's fixed 16-bit tag on
//! the 32-bit head: the stale swap succeeded, slot B was then both in
//! X2's bucket and on the freelist, the next insert wrote another stack
//! into it, `lookup` of X2's id returned a stack of another bucket and
//! `audit` found the slot twice. Now the index field is sized by
//! `max_entries` (8 here: 4 index bits) and every other bit is tag (28 on
//! the 32-bit head, 60 on the 64-bit one), so 2^16 pops can't wrap it; on
//! the LL/SC targets nothing can. Run for both head widths by
//! `scripts/test` (`--cfg kstackmap_head32` for the 32-bit one).
//!
//! Why 2^16 and not 2^T for the map's own T: 2^28 map operations take
//! minutes and 2^60 forever, and at exactly 2^T pops a CAS target *can*
//! be fooled (that is the documented bound, checked to be exact by the
//! freelist's unit test `aba_bound_is_exact` with a narrowed tag). This
//! test checks the old failure is gone for good, at the size that failed.
//! `KSTACKMAP_ABA_BITS=k` runs `2^k` pops instead (e.g. 20, by hand).

use std::sync::Mutex;

use kstackmap::{trace_hash, Config, Error, MapAttr, StackMap};

/// One process-wide hook slot: the tests here take turns.
static HOOK_LOCK: Mutex<()> = Mutex::new(());

const MAX_ENTRIES: u32 = 8;

/// What the hook needs: the map and the history to run.
struct Handler<'a> {
    map: &'a StackMap,
    x1: [u64; 2],
    x2: [u64; 2],
    pops: u64,
}

/// The "interrupt handler": `pops` pops of shard 0 while a pop of it is
/// stalled, in the pattern that brings the stalled pop's top back on top
/// with another link.
fn handler(arg: *const ()) {
    // SAFETY: `arg` points to the `Handler` that `stall_one_insert` keeps
    // alive across the insert that fires this hook.
    let h = unsafe { &*arg.cast::<Handler<'_>>() };
    let id1 = h.map.get_stackid(0, &h.x1, 0).expect("pops A");
    h.map.get_stackid(0, &h.x2, 0).expect("pops B");
    h.map.delete(id1).expect("pushes A back");
    for _ in 2..h.pops {
        assert_eq!(h.map.get_stackid(0, &h.x1, 0), Ok(id1), "pops A");
        h.map.delete(id1).expect("pushes A");
    }
}

/// `n` two-frame stacks whose ids (buckets) are distinct.
fn stacks_in_distinct_buckets(map: &StackMap, n: usize) -> Vec<([u64; 2], u32)> {
    let mut out: Vec<([u64; 2], u32)> = Vec::new();
    for x in 1u64.. {
        let s = [0x4000_0000 + x * 16, 0x5000_0000 + x];
        let id = trace_hash(&s) & (map.n_buckets() - 1);
        if out.iter().all(|&(_, other)| other != id) {
            out.push((s, id));
            if out.len() == n {
                break;
            }
        }
    }
    out
}

fn small_map() -> StackMap {
    let attr = MapAttr {
        max_entries: MAX_ENTRIES,
        value_size: 16,
        ..MapAttr::default()
    };
    let cfg = Config {
        nr_cpus: 1,
        ..Config::default()
    };
    StackMap::with_config(&attr, cfg).unwrap()
}

/// Stalls one insert's pop across `pops` pops of its shard, then checks
/// every stored stack, every bucket and conservation.
fn stall_one_insert(pops: u64) {
    let _turn = HOOK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut map = small_map();
    let s = stacks_in_distinct_buckets(&map, 4);
    let [(s0, id0), (x1, _), (x2, id2), (x3, id3)] = [s[0], s[1], s[2], s[3]];

    let h = Handler {
        map: &map,
        x1,
        x2,
        pops,
    };
    map.arm_pop_hook(0, handler, std::ptr::from_ref(&h).cast());
    // The stalled insert: its pop fires the handler.
    assert_eq!(map.get_stackid(0, &s0, 0), Ok(id0));
    // Had the stalled pop been fooled, the freelist's top would now be B,
    // which X2's bucket holds: this insert would overwrite X2.
    assert_eq!(map.get_stackid(0, &x3, 0), Ok(id3));

    let mut v = [0u8; 16];
    for (stack, id) in [(s0, id0), (x2, id2), (x3, id3)] {
        map.lookup(id, &mut v).expect("stored");
        let got = [
            u64::from_ne_bytes(v[..8].try_into().unwrap()),
            u64::from_ne_bytes(v[8..].try_into().unwrap()),
        ];
        assert_eq!(got, stack, "bucket {id} holds another stack");
    }
    // Every bucket holds a stack of its own id, or nothing.
    for id in 0..map.n_buckets() {
        match map.lookup(id, &mut v) {
            Ok(()) => {
                let ips: Vec<u64> = v
                    .chunks_exact(8)
                    .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
                    .collect();
                let hash = trace_hash(&ips) & (map.n_buckets() - 1);
                assert_eq!(hash, id, "bucket {id} holds a stack of bucket {hash}");
            }
            Err(e) => assert_eq!(e, Error::NoEnt),
        }
    }
    assert_eq!(
        map.audit(),
        Ok((3, MAX_ENTRIES as usize - 3)),
        "conservation"
    );
}

fn pops() -> u64 {
    let bits = std::env::var("KSTACKMAP_ABA_BITS")
        .ok()
        .and_then(|b| b.parse::<u32>().ok())
        .unwrap_or(16);
    1u64 << bits
}

/// The head width this build uses: 32 bits with `--cfg kstackmap_head32`
/// or without 64-bit atomics.
fn head32() -> bool {
    cfg!(any(kstackmap_head32, not(target_has_atomic = "64")))
}

#[test]
fn stalled_pop_survives_65536_pops_of_its_shard() {
    stall_one_insert(pops());
}

/// Short histories (2 and 3 pops in the window): the stalled pop's CAS
/// fails, it retries, and the map is intact.
#[test]
fn hook_with_a_short_history() {
    stall_one_insert(2);
    stall_one_insert(3);
}

/// The index field is sized by `max_entries` (8 slots: 4 bits) and the
/// tag gets the rest of the head word.
#[test]
fn tag_gets_every_bit_the_index_does_not_need() {
    let bits = if head32() { 32 } else { 64 };
    assert_eq!(small_map().freelist_tag_bits(), bits - 4);
}

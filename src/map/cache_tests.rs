//! Unit tests of the hit cache (`cache.rs`); Miri runs these too.

use super::cache::Probe;
use crate::uapi::{BPF_F_FAST_STACK_CMP, BPF_F_REUSE_STACKID, BPF_F_STACK_BUILD_ID};
use crate::{trace_hash, Config, Error, MapAttr, StackMap, StackMapIn, StackRef};

fn map(max_entries: u32, value_size: u32, map_flags: u32) -> StackMap {
    let attr = MapAttr {
        max_entries,
        key_size: 4,
        value_size,
        map_flags,
        numa_node: 0,
    };
    StackMap::new(&attr).unwrap()
}

/// A stack of `depth` frames after `from` whose id in `n_buckets` is `id`.
fn stack_in(id: u32, n_buckets: u32, depth: u64, from: u64) -> std::vec::Vec<u64> {
    (from..)
        .map(|x| {
            (0..depth)
                .map(|k| x * 0x100 + k * 8)
                .collect::<std::vec::Vec<_>>()
        })
        .find(|s| trace_hash(s) & (n_buckets - 1) == id)
        .unwrap()
}

/// The probe's answer, a hit as its id (the version is checked apart).
fn probe(m: &StackMap, ips: &[u64]) -> Probe {
    match m.probe(ips).1 {
        Probe::Hit(r) => {
            // A hit names the version `get_stackid_versioned` would.
            assert_eq!(m.get_stackid_versioned(0, ips, 0), Ok(r));
            Probe::Hit(StackRef {
                id: r.id,
                version: 0,
            })
        }
        other => other,
    }
}

fn hit(id: u32) -> Probe {
    Probe::Hit(StackRef { id, version: 0 })
}

#[test]
fn hit_then_the_hash_of_a_replaced_stack_then_a_miss() {
    let m = map(8, 32, 0);
    let a = [0x10, 0x20, 0x30];
    let id = trace_hash(&a) & 7;
    assert_eq!(probe(&m, &a), Probe::Miss, "nothing cached yet");
    assert_eq!(m.get_stackid(0, &a, 0), Ok(id));
    assert_eq!(probe(&m, &a), hit(id));
    // C takes A's bucket; A's element is intact on the freelist: the probe
    // can't call it a hit, but knows A's hash. (C is picked in another
    // set, where its refresh can't evict A's now stale entry.)
    let c = (1..)
        .map(|from| stack_in(id, 8, 3, from))
        .find(|c| m.cache_set(c) != m.cache_set(&a))
        .unwrap();
    assert_eq!(m.get_stackid(0, &c, BPF_F_REUSE_STACKID), Ok(id));
    assert_eq!(probe(&m, &a), Probe::Hash(trace_hash(&a)));
    assert_eq!(m.get_stackid(0, &a, 0), Err(Error::Exist));
    assert_eq!(m.get_stackid(0, &a, BPF_F_REUSE_STACKID), Ok(id));
    assert_eq!(probe(&m, &a), hit(id));
    // Churn every element through other stacks: A's old element (and
    // then its new one) gets rewritten, and the probe misses.
    assert_eq!(m.delete(id), Ok(()));
    for x in 0..64 {
        let s = stack_in((id + 1) & 7, 8, 3, 100 + 37 * x);
        assert_eq!(m.get_stackid(0, &s, BPF_F_REUSE_STACKID), Ok((id + 1) & 7));
    }
    assert_eq!(probe(&m, &a), Probe::Miss);
    assert_eq!(m.get_stackid(0, &a, 0), Ok(id));
    assert_eq!(probe(&m, &a), hit(id));
}

/// FAST_CMP through the cache: a verified hit is a hash match too.
#[test]
fn fast_cmp_hits_through_the_cache() {
    let m = map(4, 16, 0);
    let a = [7, 8];
    let id = m.get_stackid(0, &a, 0).unwrap();
    assert_eq!(probe(&m, &a), hit(id));
    assert_eq!(m.get_stackid(0, &a, BPF_F_FAST_STACK_CMP), Ok(id));
    let other = stack_in(id, 4, 2, 50);
    assert_eq!(
        m.get_stackid(0, &other, BPF_F_FAST_STACK_CMP),
        Err(Error::Exist)
    );
}

/// Whatever an entry holds (any slot and bucket, with the right check
/// bits: what a stale or torn entry amounts to), every result equals that of a twin
/// map whose entries are left alone, over a random run of calls.
#[test]
fn forged_entries_change_nothing() {
    let (calls, n) = if cfg!(miri) { (300, 6) } else { (20_000, 12) };
    let (a, b) = (map(n, 24, 0), map(n, 24, 0));
    let nb = a.n_buckets();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // A pool with prefixes of each other (same first frames, other nr).
    let pool: std::vec::Vec<std::vec::Vec<u64>> = (0..3 * n as u64)
        .map(|k| (0..1 + k % 3).map(|j| 0x1000 * (k / 3) + j).collect())
        .collect();
    let (mut va, mut vb) = ([0u8; 24], [0u8; 24]);
    for call in 0..calls {
        let s = &pool[next() as usize % pool.len()];
        a.cache_forge(s, next() as u32 % (n + 1), next() as u32 % (nb + 1));
        let flags = [0, BPF_F_REUSE_STACKID, BPF_F_FAST_STACK_CMP][next() as usize % 3];
        let cpu = next() as usize % 2;
        let got = a.get_stackid(cpu, s, flags);
        assert_eq!(
            got,
            b.get_stackid(cpu, s, flags),
            "call {call}: {s:x?} {flags:#x}"
        );
        let id = next() as u32 % nb;
        if next() % 8 == 0 {
            assert_eq!(a.delete(id), b.delete(id), "call {call}: delete {id}");
        }
        assert_eq!(a.lookup(id, &mut va), b.lookup(id, &mut vb), "call {call}");
        assert_eq!(va, vb, "call {call}: lookup {id}");
    }
}

/// The cache lives in the map's memory: 8 bytes per bucket on ips maps,
/// none on build-id maps (which never use it), counted by `mem_usage`
/// and `storage_size`.
#[test]
fn memory_counts_the_cache() {
    use core::mem::size_of;
    let cfg = Config::default();
    // Miri is ~1000x slower: small maps only.
    let sizes: &[(u32, u32)] = if cfg!(miri) {
        &[(1, 32), (4, 64), (100, 32)]
    } else {
        &[(1, 32), (100, 256), (1024, 992)]
    };
    for &(max_entries, value_size) in sizes {
        for flags in [0, BPF_F_STACK_BUILD_ID] {
            let attr = MapAttr {
                max_entries,
                key_size: 4,
                value_size,
                map_flags: flags,
                numa_node: 0,
            };
            let m = StackMap::with_config(&attr, cfg).unwrap();
            let nb = m.n_buckets() as usize;
            // 8 bytes per bucket, in sets of two entries (none below one).
            let word = core::mem::size_of::<crate::sync::ElemWord>();
            let cache = if flags == 0 && 8 * nb >= 2 * word {
                8 * nb
            } else {
                0
            };
            let heads = cfg.nr_cpus * size_of::<crate::freelist::Head>();
            let elems = max_entries as usize * (16 + value_size as usize);
            let want = size_of::<StackMap>() + heads + 4 * nb + cache + elems;
            assert_eq!(m.mem_usage(), want, "{attr:?}");
            let storage = StackMapIn::storage_size(&attr, cfg).unwrap();
            assert!(storage >= want - size_of::<StackMap>(), "{attr:?}");
            assert!(storage < want - size_of::<StackMap>() + 256, "{attr:?}");
            if flags != 0 {
                assert!(m.probe(&[1, 2]).0.is_none(), "no cache on build-id maps");
            }
        }
    }
}

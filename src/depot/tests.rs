//! Unit tests of the depot (Miri runs them too: sizes shrink under
//! `cfg(miri)`).

extern crate std;

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::vec;
use std::vec::Vec;

use super::*;
use crate::uapi::StackBuildId;

fn cfg(capacity: u32, arena_words: usize) -> DepotConfig {
    DepotConfig {
        capacity,
        arena_words,
        nr_cpus: 2,
        seed: 0x1234,
    }
}

fn depot(capacity: u32, arena_words: usize) -> StackDepot {
    StackDepot::new(&cfg(capacity, arena_words)).unwrap()
}

/// Conservation with nothing in flight.
fn check_conserved(d: &StackDepotIn<'_>) {
    let s = d.stats();
    assert_eq!(s.words_used, s.record_words + s.wasted_words, "{s:?}");
    assert_eq!(s.ids_used as usize, s.stacks + s.wasted_ids, "{s:?}");
    let words: usize = d.iter().map(|(_, w)| w.len() + 1).sum();
    assert_eq!(words, s.record_words, "{s:?}");
    assert_eq!(d.iter().count(), s.stacks);
    assert_eq!(d.len(), s.stacks);
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[test]
fn config_errors() {
    let ok = cfg(4, 16);
    assert!(StackDepot::new(&ok).is_ok());
    let bad = [
        DepotConfig { capacity: 0, ..ok },
        DepotConfig {
            capacity: MAX_CAPACITY + 1,
            ..ok
        },
        DepotConfig {
            arena_words: 1,
            ..ok
        },
        DepotConfig {
            arena_words: 0,
            ..ok
        },
        DepotConfig {
            arena_words: MAX_ARENA_WORDS + 1,
            ..ok
        },
        DepotConfig { nr_cpus: 0, ..ok },
    ];
    for c in bad {
        assert_eq!(StackDepot::new(&c).err(), Some(Error::Inval), "{c:?}");
        assert_eq!(StackDepot::storage_size(&c), Err(Error::Inval), "{c:?}");
    }
    // The largest capacity is accepted (its size is only computed here).
    let big = DepotConfig {
        capacity: MAX_CAPACITY,
        arena_words: MAX_ARENA_WORDS,
        ..ok
    };
    let size = StackDepot::storage_size(&big).unwrap();
    assert!(size > MAX_ARENA_WORDS * 8 + MAX_CAPACITY as usize * 12);
    // An arena of 2 words holds exactly one one-frame stack.
    let d = depot(4, 2);
    assert_eq!(d.intern(0, &[1]), Ok(0));
    assert_eq!(d.intern(0, &[2]), Err(Error::NoMem));
    assert_eq!(d.intern(0, &[]), Err(Error::Inval));
}

#[test]
fn default_config_is_valid() {
    let c = DepotConfig::default();
    assert_eq!(c.capacity, 16_384);
    if !cfg!(miri) {
        let d = StackDepot::new(&c).unwrap();
        assert_eq!(d.capacity(), 16_384);
        assert_eq!(d.arena_words(), 16_384 * 16);
    }
}

#[test]
fn same_frames_same_id_different_frames_different_ids() {
    let d = depot(64, 1024);
    let a = d.intern(0, &[0x1000, 0x2000]).unwrap();
    let b = d.intern(1, &[0x1000, 0x2004]).unwrap();
    let c = d.intern(0, &[0x1000]).unwrap();
    let e = d.intern(0, &[0x1000, 0x2000, 0]).unwrap();
    assert_eq!((a, b, c, e), (0, 1, 2, 3), "ids are handed out in order");
    assert_eq!(d.intern(1, &[0x1000, 0x2000]), Ok(a));
    assert_eq!(d.intern(0, &[0x1000]), Ok(c));
    assert_eq!(d.get(a), Some(&[0x1000, 0x2000][..]));
    assert_eq!(d.get(b), Some(&[0x1000, 0x2004][..]));
    assert_eq!(d.get(c), Some(&[0x1000][..]));
    assert_eq!(d.get(e), Some(&[0x1000, 0x2000, 0][..]));
    assert_eq!(d.get(4), None);
    assert_eq!(d.get(u32::MAX), None);
    assert_eq!(d.kind(a), Some(StackKind::Ips));
    assert_eq!(d.len(), 4);
    assert!(!d.is_empty());
    let all: Vec<(u32, Vec<u64>)> = d.iter().map(|(i, w)| (i, w.to_vec())).collect();
    assert_eq!(all.len(), 4);
    assert_eq!(all[2], (2, vec![0x1000]));
    let s = d.stats();
    assert_eq!(s.record_words, 3 + 3 + 2 + 4);
    assert_eq!((s.lost_races, s.wasted_ids, s.wasted_words), (0, 0, 0));
    check_conserved(&d);
}

#[test]
fn get_is_zero_copy_and_stable() {
    let d = depot(8, 64);
    let id = d.intern(0, &[7, 8, 9]).unwrap();
    let p1 = d.get(id).unwrap().as_ptr();
    for i in 0..5u64 {
        d.intern(0, &[i + 100]).unwrap();
    }
    let got = d.get(id).unwrap();
    assert_eq!(got.as_ptr(), p1, "the same words, not a copy");
    assert_eq!(got, &[7, 8, 9]);
}

/// Full by ids: `NoMem`, nothing changed, stacks stored still found.
#[test]
fn full_by_capacity() {
    let d = depot(3, 100);
    for i in 0..3u64 {
        assert_eq!(d.intern(0, &[i, i]), Ok(i as u32));
    }
    let before = d.stats();
    assert_eq!(d.intern(0, &[9, 9]), Err(Error::NoMem));
    assert_eq!(d.intern(1, &[10]), Err(Error::NoMem));
    assert_eq!(d.stats(), before, "nothing changed");
    for i in 0..3u64 {
        assert_eq!(d.intern(0, &[i, i]), Ok(i as u32), "still found");
    }
    assert_eq!(d.stats(), before);
    check_conserved(&d);
}

/// Full by arena words: `NoMem` for what does not fit, nothing changed; a
/// smaller record still fits.
#[test]
fn full_by_arena() {
    let d = depot(16, 10);
    assert_eq!(d.intern(0, &[1, 2, 3, 4]), Ok(0)); // 5 words
    assert_eq!(d.intern(0, &[5, 6]), Ok(1)); // 3 words, 8 used
    let before = d.stats();
    assert_eq!(d.intern(0, &[7, 8]), Err(Error::NoMem));
    assert_eq!(d.intern(0, &[1; 100]), Err(Error::NoMem));
    assert_eq!(d.stats(), before, "nothing changed");
    assert_eq!(d.intern(0, &[1, 2, 3, 4]), Ok(0));
    assert_eq!(d.intern(0, &[9]), Ok(2)); // exactly fills the arena
    assert_eq!(d.stats().words_used, 10);
    assert_eq!(d.intern(0, &[10]), Err(Error::NoMem));
    check_conserved(&d);
}

/// Every stack hashes alike: one probe run, one tag; only the full compare
/// tells the stacks apart.
#[test]
fn colliding_hashes_keep_stacks_apart() {
    let mut d = depot(40, 1024);
    d.force_hash_collisions();
    let n = if cfg!(miri) { 10 } else { 32 };
    for i in 0..n {
        assert_eq!(d.intern(0, &[i, 0x77]), Ok(i as u32));
    }
    for i in (0..n).rev() {
        assert_eq!(d.intern(1, &[i, 0x77]), Ok(i as u32));
        assert_eq!(d.get(i as u32), Some(&[i, 0x77][..]));
    }
    // Prefixes and extensions are other stacks.
    let p = d.intern(0, &[0]).unwrap();
    let q = d.intern(0, &[0, 0x77, 0]).unwrap();
    assert!(p != q && p >= n as u32 && q >= n as u32);
    check_conserved(&d);
}

/// At the probe bound, a new stack is refused with `NoMem` (counted),
/// nothing else changes, and the stacks in the run are still found.
#[test]
fn probe_bound_refuses_new_stacks() {
    if cfg!(miri) {
        return; // 256 records: too slow under Miri, nothing Miri-specific
    }
    let mut d = depot(PROBE_MAX + 8, 4096);
    d.force_hash_collisions();
    for i in 0..PROBE_MAX as u64 {
        assert_eq!(d.intern(0, &[i]), Ok(i as u32));
    }
    let before = d.stats();
    assert_eq!(d.intern(0, &[9999]), Err(Error::NoMem));
    let after = d.stats();
    assert_eq!(after.probe_limit, 1);
    assert_eq!(
        DepotStats {
            probe_limit: 0,
            ..after
        },
        before,
        "nothing else changed: the reservation was given back"
    );
    assert_eq!(d.intern(0, &[PROBE_MAX as u64 - 1]), Ok(PROBE_MAX - 1));
    check_conserved(&d);
}

#[test]
fn build_id_stacks() {
    let d = depot(16, 256);
    let mut id = [0u8; 20];
    id[0] = 0xab;
    let frames = [
        StackBuildId::valid(id, 0x1234),
        StackBuildId::from_ip(0xffff_ffff_8100_0000),
    ];
    let b = d.intern_build_ids(0, &frames).unwrap();
    assert_eq!(d.intern_build_ids(1, &frames), Ok(b));
    assert_eq!(d.get_build_ids(b), Some(&frames[..]));
    assert_eq!(d.kind(b), Some(StackKind::BuildIds));
    // The same words as an ips stack: another stack.
    let words = d.get(b).unwrap().to_vec();
    assert_eq!(words.len(), 8);
    let i = d.intern(0, &words).unwrap();
    assert_ne!(i, b);
    assert_eq!(d.get_build_ids(i), None);
    assert_eq!(d.kind(i), Some(StackKind::Ips));
    assert_eq!(d.get(i), Some(&words[..]));
    assert_eq!(d.intern_build_ids(0, &[]), Err(Error::Inval));
    // Zero-copy: the frames are the arena's words.
    assert_eq!(
        d.get_build_ids(b).unwrap().as_ptr() as usize,
        d.get(b).unwrap().as_ptr() as usize
    );
    check_conserved(&d);
}

/// With every hash equal, a build-id stack and an ips stack of the same
/// words still get different ids (the kind is compared, not just hashed).
#[test]
fn kind_is_compared_not_only_hashed() {
    let mut d = depot(16, 256);
    d.force_hash_collisions();
    let frames = [StackBuildId::from_ip(5)];
    let b = d.intern_build_ids(0, &frames).unwrap();
    let words = d.get(b).unwrap().to_vec();
    let i = d.intern(0, &words).unwrap();
    assert_ne!(i, b);
    assert_eq!(d.intern_build_ids(0, &frames), Ok(b));
    assert_eq!(d.intern(0, &words), Ok(i));
}

#[test]
fn clear_forgets_everything() {
    let mut d = depot(4, 32);
    for i in 0..4u64 {
        d.intern(0, &[i]).unwrap();
    }
    assert_eq!(d.intern(0, &[99]), Err(Error::NoMem));
    d.clear();
    assert_eq!(d.len(), 0);
    assert!(d.is_empty());
    assert_eq!(d.stats(), DepotStats::default());
    assert_eq!(d.get(0), None);
    assert_eq!(d.iter().count(), 0);
    assert_eq!(d.intern(0, &[99]), Ok(0));
    assert_eq!(d.get(0), Some(&[99][..]));
    assert_eq!(d.intern(0, &[0]), Ok(1));
}

#[test]
fn new_in_any_alignment_and_size() {
    let c = cfg(8, 64);
    let need = StackDepotIn::storage_size(&c).unwrap();
    let mut buf = vec![MaybeUninit::<u8>::uninit(); need + 64];
    for shift in [0, 1, 3, 7, 8, 13] {
        let mem = &mut buf[shift..shift + need];
        let d = StackDepotIn::new_in(&c, mem).unwrap();
        assert_eq!(d.intern(0, &[1, 2, 3]), Ok(0));
        assert_eq!(d.get(0), Some(&[1, 2, 3][..]));
        assert!(d.mem_usage() <= need + size_of::<StackDepotIn<'_>>());
    }
    // Too short for some alignment: NoMem, never a panic.
    for shift in 0..8 {
        let r = StackDepotIn::new_in(&c, &mut buf[shift..shift + need - 128]);
        assert_eq!(r.err(), Some(Error::NoMem));
    }
    assert_eq!(StackDepotIn::new_in(&c, &mut []).err(), Some(Error::NoMem));
}

#[test]
fn in_static_storage() {
    use crate::StaticStorage;
    static MEM: StaticStorage<{ 16 * 1024 }> = StaticStorage::new();
    let c = cfg(16, 256);
    assert!(StackDepotIn::storage_size(&c).unwrap() <= 16 * 1024);
    let d = StackDepotIn::new_in(&c, MEM.take().unwrap()).unwrap();
    assert_eq!(d.intern(0, &[5]), Ok(0));
}

#[test]
fn mem_usage_is_the_block() {
    let c = cfg(1000, 10_000);
    let d = StackDepot::new(&c).unwrap();
    let arena = 10_000 * 8;
    let index = 2048 * 4;
    let dir = 1000 * 4;
    let u = d.mem_usage();
    assert!(u >= arena + index + dir, "{u}");
    assert!(u <= arena + index + dir + 3 * 128 + 1024, "{u}");
}

/// The memory target: records cost 8 bytes a frame plus an 8-byte header
/// (plus 4 bytes in the directory), within 1.25 x (8 B x frames + 16 B a
/// stack).
#[test]
fn records_are_exact_length() {
    let d = depot(512, 1 << 14);
    let mut x = 99u64;
    let mut frames = 0;
    let n = if cfg!(miri) { 20 } else { 500 };
    for _ in 0..n {
        let depth = 1 + (xorshift(&mut x) % 30) as usize;
        let s: Vec<u64> = (0..depth).map(|_| xorshift(&mut x)).collect();
        frames += depth;
        d.intern(0, &s).unwrap();
    }
    let s = d.stats();
    assert_eq!(s.record_words, frames + n);
    let bytes = s.record_words * 8 + n * 4;
    assert!(bytes * 4 <= (8 * frames + 16 * n) * 5);
}

/// Against a HashMap, with a random mix of known and new stacks.
#[test]
fn matches_a_hashmap() {
    let (cap, n) = if cfg!(miri) { (64, 40) } else { (2000, 3000) };
    let d = depot(cap, cap as usize * 10);
    let mut model: HashMap<Vec<u64>, u32> = HashMap::new();
    let mut x = 5u64;
    for _ in 0..n {
        let depth = 1 + (xorshift(&mut x) % 4) as usize;
        let s: Vec<u64> = (0..depth).map(|_| xorshift(&mut x) % 6).collect();
        let got = d.intern(0, &s);
        match model.get(&s) {
            Some(&id) => assert_eq!(got, Ok(id)),
            None => {
                let id = got.unwrap();
                assert_eq!(id as usize, model.len());
                model.insert(s.clone(), id);
            }
        }
        assert_eq!(d.get(got.unwrap()), Some(&s[..]));
    }
    assert_eq!(d.len(), model.len());
    check_conserved(&d);
}

/// Threads interning overlapping stacks: one id per stack, each id reads
/// back its stack, and the words are conserved (lost races give back or
/// count their records). Under Miri this is also a data-race check of the
/// publication protocol.
#[test]
fn threads_agree() {
    // A prime number of stacks: every thread's stride walks all of them.
    let (threads, stacks, rounds) = if cfg!(miri) { (3, 7, 2) } else { (4, 307, 20) };
    let d = depot(2 * stacks as u32, stacks * 10);
    let all: Vec<Vec<u64>> = (0..stacks as u64)
        .map(|i| (0..1 + i % 4).map(|j| i * 16 + j).collect())
        .collect();
    let ids: Vec<Vec<u32>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let (d, all) = (&d, &all);
                s.spawn(move || {
                    let mut ids = vec![u32::MAX; all.len()];
                    for r in 0..rounds {
                        for k in 0..all.len() {
                            // Each thread walks the stacks in its own order.
                            let i = (k * (2 * t + 1) + r) % all.len();
                            let id = d.intern(t, &all[i]).unwrap();
                            assert!(ids[i] == u32::MAX || ids[i] == id);
                            ids[i] = id;
                            assert_eq!(d.get(id), Some(&all[i][..]));
                        }
                    }
                    ids
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for t in &ids[1..] {
        assert_eq!(t, &ids[0], "every thread got the same ids");
    }
    let mut sorted = ids[0].clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), stacks, "one id per stack");
    assert_eq!(d.len(), stacks);
    check_conserved(&d);
}

#[test]
fn depot_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<StackDepot>();
    check::<StackDepotIn<'_>>();
}

#[test]
fn debug_names_the_config() {
    let d = depot(4, 8);
    let s = std::format!("{d:?}");
    assert!(s.contains("capacity: 4"), "{s}");
}

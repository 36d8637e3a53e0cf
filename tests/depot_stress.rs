//! Multi-thread stress of the depot: more threads than cores (so threads
//! are preempted mid-intern), stacks with shared prefixes, ips and
//! build-id stacks with equal words, readers walking `iter` meanwhile.
//!
//! Checked: every id an intern returns reads back its own frames at once
//! and forever after; one id per distinct stack (all threads agree); the
//! arena's words are conserved (used = stored records + wasted) and so are
//! the ids; a full depot refuses only new stacks and keeps finding the
//! stored ones.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use kstackmap::{DepotConfig, Error, StackBuildId, StackDepot, StackKind};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Stack {
    Ips(Vec<u64>),
    BuildIds(Vec<StackBuildId>),
}

impl Stack {
    fn words(&self) -> Vec<u64> {
        match self {
            Stack::Ips(v) => v.clone(),
            Stack::BuildIds(f) => zerocopy::IntoBytes::as_bytes(&f[..])
                .chunks_exact(8)
                .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
                .collect(),
        }
    }
    fn kind(&self) -> StackKind {
        match self {
            Stack::Ips(_) => StackKind::Ips,
            Stack::BuildIds(_) => StackKind::BuildIds,
        }
    }
    fn intern(&self, d: &StackDepot, cpu: usize) -> Result<u32, Error> {
        match self {
            Stack::Ips(v) => d.intern(cpu, v),
            Stack::BuildIds(f) => d.intern_build_ids(cpu, f),
        }
    }
    /// This stack is what `d` holds under `id`, read in place.
    fn is_at(&self, d: &StackDepot, id: u32) -> bool {
        match self {
            Stack::Ips(v) => d.get(id) == Some(&v[..]) && d.kind(id) == Some(StackKind::Ips),
            Stack::BuildIds(f) => d.get_build_ids(id) == Some(&f[..]),
        }
    }
}

/// `n` distinct stacks: call-tree-like ips stacks (a stack extends or
/// changes the leaf of an earlier one), a tenth build-id stacks, and ips
/// stacks holding the words of some build-id stacks.
fn pool(rng: &mut Rng, n: usize) -> Vec<Stack> {
    let mut seen = HashSet::new();
    let mut out: Vec<Stack> = Vec::new();
    while out.len() < n {
        let s = match rng.below(10) {
            0 => Stack::BuildIds(
                (0..1 + rng.below(6))
                    .map(|_| {
                        let mut id = [0u8; 20];
                        id[0] = rng.below(4) as u8;
                        StackBuildId::valid(id, rng.below(64) as u64 * 16)
                    })
                    .collect(),
            ),
            1 => match out.iter().rev().find(|s| matches!(s, Stack::BuildIds(_))) {
                Some(b) => Stack::Ips(b.words()),
                None => continue,
            },
            _ => {
                let mut v = match out.get(rng.below(out.len() + 1)) {
                    Some(Stack::Ips(v)) if v.len() < 48 => v.clone(),
                    _ => vec![0xffff_ffff_8100_0000 + rng.below(1 << 12) as u64 * 8],
                };
                if rng.below(3) == 0 && v.len() > 1 {
                    *v.last_mut().unwrap() ^= 8 * (1 + rng.below(100) as u64);
                } else {
                    v.push(0xffff_ffff_8100_0000 + rng.below(1 << 20) as u64 * 4);
                }
                Stack::Ips(v)
            }
        };
        if seen.insert(s.clone()) {
            out.push(s);
        }
    }
    out
}

/// Each of `threads` threads interns every stack of `pool` `rounds` times
/// in its own order, checking each result at once; `readers` threads walk
/// `iter` meanwhile, checking that an id never changes its stack. Returns
/// each thread's `Result` per stack (the last one).
fn hammer(
    d: &StackDepot,
    pool: &[Stack],
    threads: usize,
    rounds: usize,
    readers: usize,
    same_order: bool,
) -> Vec<Vec<Result<u32, Error>>> {
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        for r in 0..readers {
            let done = &done;
            s.spawn(move || {
                let mut seen: HashMap<u32, Vec<u64>> = HashMap::new();
                let mut walks = 0;
                while !done.load(Ordering::Relaxed) || walks == 0 {
                    let mut last = None;
                    for (id, w) in d.iter() {
                        assert!(last < Some(id), "iter in id order");
                        last = Some(id);
                        assert!(!w.is_empty());
                        if let Some(old) = seen.insert(id, w.to_vec()) {
                            assert_eq!(old, w, "reader {r}: id {id} changed its stack");
                        }
                    }
                    walks += 1;
                }
            });
        }
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut rng = Rng(if same_order { 1 } else { t as u64 * 7919 + 1 });
                    let mut got = vec![Err(Error::Inval); pool.len()];
                    for _ in 0..rounds {
                        let mut order: Vec<usize> = (0..pool.len()).collect();
                        for i in (1..order.len()).rev() {
                            order.swap(i, rng.below(i + 1));
                        }
                        for i in order {
                            let r = pool[i].intern(d, t);
                            if let Ok(id) = r {
                                assert!(id < d.capacity());
                                assert!(pool[i].is_at(d, id), "id {id} reads back its stack");
                                if let Ok(old) = got[i] {
                                    assert_eq!(old, id, "a stack's id never changes");
                                }
                            }
                            got[i] = r;
                        }
                    }
                    got
                })
            })
            .collect();
        let out = workers.into_iter().map(|w| w.join().unwrap()).collect();
        done.store(true, Ordering::Relaxed);
        out
    })
}

/// With no intern in flight: words and ids are conserved, and `iter`
/// agrees with the stats.
fn check_conserved(d: &StackDepot) {
    let s = d.stats();
    assert_eq!(s.words_used, s.record_words + s.wasted_words, "{s:?}");
    assert_eq!(s.ids_used as usize, s.stacks + s.wasted_ids, "{s:?}");
    let words: usize = d.iter().map(|(_, w)| w.len() + 1).sum();
    assert_eq!(words, s.record_words, "{s:?}");
    assert_eq!(d.iter().count(), s.stacks);
    eprintln!("{s:?}");
}

fn cfg(capacity: u32, arena_words: usize) -> DepotConfig {
    DepotConfig {
        capacity,
        arena_words,
        nr_cpus: 2,
        seed: 0xfeed,
    }
}

#[test]
fn room_for_all_stacks() {
    let mut rng = Rng(1);
    let pool = pool(&mut rng, 12_000);
    let words: usize = pool.iter().map(|s| s.words().len() + 1).sum();
    // Room for every stack and for what lost races may waste.
    let d = StackDepot::new(&cfg(16_000, words * 2)).unwrap();
    let got = hammer(&d, &pool, 4, 3, 1, false);
    // No refusals: 0 drops when the depot is big enough.
    let ids: Vec<u32> = got[0].iter().map(|r| r.unwrap()).collect();
    for g in &got[1..] {
        let theirs: Vec<u32> = g.iter().map(|r| r.unwrap()).collect();
        assert_eq!(theirs, ids, "every thread got the same ids");
    }
    let distinct: HashSet<u32> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), pool.len(), "one id per distinct stack");
    assert_eq!(d.len(), pool.len());
    for (s, &id) in pool.iter().zip(&ids) {
        assert!(s.is_at(&d, id));
        assert_eq!(d.kind(id), Some(s.kind()));
        assert_eq!(d.get(id), Some(&s.words()[..]));
    }
    check_conserved(&d);
}

/// Every thread interns the stacks in the same order, so threads race to
/// publish the same stack (lost races: their records are given back or
/// counted as wasted).
#[test]
fn same_order_races() {
    let mut rng = Rng(4);
    let pool = pool(&mut rng, 8_000);
    let words: usize = pool.iter().map(|s| s.words().len() + 1).sum();
    let d = StackDepot::new(&cfg(10_000, words * 2)).unwrap();
    let got = hammer(&d, &pool, 4, 1, 0, true);
    for g in &got[1..] {
        assert_eq!(g, &got[0], "every thread got the same ids");
    }
    let distinct: HashSet<u32> = got[0].iter().map(|r| r.unwrap()).collect();
    assert_eq!(distinct.len(), pool.len(), "one id per distinct stack");
    check_conserved(&d);
}

/// Ids run out: stored stacks are still found, new ones get `NoMem`.
#[test]
fn full_by_ids() {
    let mut rng = Rng(2);
    let pool = pool(&mut rng, 6_000);
    let d = StackDepot::new(&cfg(2_000, 1 << 20)).unwrap();
    hammer(&d, &pool, 4, 2, 1, false);
    check_full(&d, &pool);
    assert_eq!(d.stats().ids_used, 2_000, "every id taken");
    assert_eq!(d.len() + d.stats().wasted_ids, 2_000);
}

/// The arena runs out first.
#[test]
fn full_by_arena() {
    let mut rng = Rng(3);
    let pool = pool(&mut rng, 6_000);
    let d = StackDepot::new(&cfg(8_000, 20_000)).unwrap();
    hammer(&d, &pool, 4, 2, 1, false);
    check_full(&d, &pool);
    // The largest record is 25 words (6 build-id frames), and smaller ones
    // fill the rest.
    assert!(d.stats().words_used > 20_000 - 25, "{:?}", d.stats());
}

/// Sequential passes after the storm: the first may still store a stack
/// that met a transiently full depot (ids or words held by a loser about
/// to give them back); the second must find every stored stack again,
/// refuse the others with `NoMem`, and change nothing.
fn check_full(d: &StackDepot, pool: &[Stack]) {
    check_conserved(d);
    let first: Vec<Result<u32, Error>> = pool.iter().map(|s| s.intern(d, 0)).collect();
    let before = d.stats();
    let mut refused = 0;
    for (s, r) in pool.iter().zip(&first) {
        let again = s.intern(d, 1);
        assert_eq!(&again, r);
        match again {
            Ok(id) => assert!(s.is_at(d, id)),
            Err(Error::NoMem) => refused += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(refused > 0);
    assert_eq!(d.stats(), before, "refusals and hits change nothing");
    check_conserved(d);
}

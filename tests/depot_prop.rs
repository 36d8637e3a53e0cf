//! Property test: a `StackDepot` against its sequential model (a
//! `HashMap` from stacks to ids, in `fuzz/src/depot.rs`), over random
//! configurations and operation sequences: same results call for call,
//! and the same contents (`iter`, `get`, `kind`, `stats`) at the end.

#[path = "../fuzz/src/depot.rs"]
#[allow(dead_code)]
mod depot_check;

use depot_check::Model;
use kstackmap::{DepotConfig, Error, StackBuildId, StackDepot, StackKind};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// An ips stack (from a small alphabet: repeats and prefixes are common).
    Intern(usize, Vec<u64>),
    /// A build-id stack from the same alphabet.
    InternBuildIds(usize, Vec<u64>),
    Get(u32),
    Clear,
}

fn stack() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(prop::sample::select(vec![0x10u64, 0x20, 0, u64::MAX]), 0..7)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..4usize, stack()).prop_map(|(c, s)| Op::Intern(c, s)),
        3 => (0..4usize, stack()).prop_map(|(c, s)| Op::InternBuildIds(c, s)),
        3 => (0..40u32).prop_map(Op::Get),
        1 => Just(Op::Clear),
    ]
}

fn config() -> impl Strategy<Value = DepotConfig> {
    (0..40u32, 0..120usize, 0..4usize, any::<u64>()).prop_map(
        |(capacity, arena_words, nr_cpus, seed)| DepotConfig {
            capacity,
            arena_words,
            nr_cpus,
            seed,
        },
    )
}

fn frames(s: &[u64]) -> Vec<StackBuildId> {
    s.iter().map(|&ip| StackBuildId::from_ip(ip)).collect()
}

/// A build-id stack's words as the depot stores them.
fn words_of(f: &[StackBuildId]) -> Vec<u64> {
    zerocopy::IntoBytes::as_bytes(f)
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 512 }, ..ProptestConfig::default() })]

    #[test]
    fn depot_equals_model(cfg in config(), ops in prop::collection::vec(op(), 0..80)) {
        let depot = StackDepot::new(&cfg);
        let model = Model::new(&cfg);
        prop_assert_eq!(depot.as_ref().err().copied(), model.as_ref().err().copied());
        let (Ok(mut d), Ok(mut m)) = (depot, model) else { return Ok(()) };
        for op in ops {
            match op {
                Op::Intern(cpu, s) => {
                    let got = d.intern(cpu, &s);
                    prop_assert_eq!(got, m.intern(StackKind::Ips, &s));
                    if let Ok(id) = got {
                        prop_assert!(id < cfg.capacity);
                        prop_assert_eq!(d.get(id), Some(&s[..]));
                    }
                }
                Op::InternBuildIds(cpu, s) => {
                    let f = frames(&s);
                    let got = d.intern_build_ids(cpu, &f);
                    prop_assert_eq!(got, m.intern(StackKind::BuildIds, &words_of(&f)));
                    if let Ok(id) = got {
                        prop_assert_eq!(d.get_build_ids(id), Some(&f[..]));
                    }
                }
                Op::Get(id) => {
                    let want = m.get(id);
                    prop_assert_eq!(d.get(id), want.map(|(_, w)| w));
                    prop_assert_eq!(d.kind(id), want.map(|(k, _)| k));
                }
                Op::Clear => {
                    d.clear();
                    m.clear();
                }
            }
        }
        let got: Vec<(u32, Vec<u64>)> = d.iter().map(|(i, w)| (i, w.to_vec())).collect();
        let want: Vec<(u32, Vec<u64>)> = (0..m.len() as u32)
            .map(|i| (i, m.get(i).unwrap().1.to_vec()))
            .collect();
        prop_assert_eq!(got, want);
        let s = d.stats();
        prop_assert_eq!((s.stacks, s.words_used, s.record_words), (m.len(), m.words_used(), m.words_used()));
        prop_assert_eq!((s.wasted_ids, s.wasted_words, s.lost_races), (0, 0, 0));
    }
}

/// The model's own rules, spelled out once (a model bug would otherwise
/// agree with the same bug in the depot).
#[test]
fn model_rules() {
    let cfg = DepotConfig {
        capacity: 2,
        arena_words: 6,
        nr_cpus: 1,
        seed: 0,
    };
    let mut m = Model::new(&cfg).unwrap();
    assert_eq!(m.intern(StackKind::Ips, &[]), Err(Error::Inval));
    assert_eq!(m.intern(StackKind::Ips, &[1, 2]), Ok(0));
    assert_eq!(m.intern(StackKind::BuildIds, &[1, 2]), Ok(1));
    assert_eq!(m.intern(StackKind::Ips, &[1, 2]), Ok(0));
    assert_eq!(m.intern(StackKind::Ips, &[3]), Err(Error::NoMem));
    assert_eq!(m.words_used(), 6);
    assert_eq!(
        Model::new(&DepotConfig { capacity: 0, ..cfg }).err(),
        Some(Error::Inval)
    );
}

//! The `depot` check: a `StackDepot` and a sequential model (a `HashMap`
//! from stacks to ids, ids handed out in order), driven by the same
//! operations, must agree call for call.
//!
//! An [`Input`] picks a configuration (valid or not) and a sequence of
//! operations: interns of ips and build-id stacks from a small pool (so
//! repeats, prefixes and equal words of different kinds are common), gets
//! of any id, iteration, `clear`, and statistics checks. Capacities and
//! arenas are small, so `NoMem` for ids and for arena words are common
//! too. After every operation the results must be equal; at the end every
//! stored stack must read back through `get`, `get_build_ids`, `kind` and
//! `iter`, and the arena words must be conserved.
//!
//! [`Model`] is the reference: `tests/depot_prop.rs` and
//! `tests/fuzz_regressions.rs` include this file by path.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::vec::Vec;

use arbitrary::Arbitrary;
use kstackmap::{
    DepotConfig, Error, StackBuildId, StackDepot, StackDepotIn, StackKind, MAX_ARENA_WORDS,
    MAX_CAPACITY,
};

/// At most this many operations are run per input.
pub const MAX_OPS: usize = 1024;

/// The sequential model of a depot: what it must return, call for call.
///
/// Sequentially a depot wastes nothing, so the next id is the number of
/// stacks and the arena words used are their records (one header word
/// each). The probe bound never matters here: at most 64 stacks, so the
/// index (at most half full) is shorter than the bound.
#[derive(Debug, Clone)]
pub struct Model {
    capacity: u32,
    arena_words: usize,
    used: usize,
    ids: HashMap<(StackKind, Vec<u64>), u32>,
    stacks: Vec<(StackKind, Vec<u64>)>,
}

impl Model {
    /// The model of a depot made with `cfg`, or the error creating it gives.
    pub fn new(cfg: &DepotConfig) -> Result<Model, Error> {
        if cfg.capacity == 0
            || cfg.capacity > MAX_CAPACITY
            || cfg.arena_words < 2
            || cfg.arena_words > MAX_ARENA_WORDS
            || cfg.nr_cpus == 0
        {
            return Err(Error::Inval);
        }
        Ok(Model {
            capacity: cfg.capacity,
            arena_words: cfg.arena_words,
            used: 0,
            ids: HashMap::new(),
            stacks: Vec::new(),
        })
    }

    /// `intern` (kind `Ips`) or `intern_build_ids` (`BuildIds`, as words).
    pub fn intern(&mut self, kind: StackKind, words: &[u64]) -> Result<u32, Error> {
        if words.is_empty() {
            return Err(Error::Inval);
        }
        let key = (kind, words.to_vec());
        if let Some(&id) = self.ids.get(&key) {
            return Ok(id);
        }
        if self.stacks.len() >= self.capacity as usize
            || self.used + words.len() + 1 > self.arena_words
        {
            return Err(Error::NoMem);
        }
        let id = self.stacks.len() as u32;
        self.used += words.len() + 1;
        self.ids.insert(key.clone(), id);
        self.stacks.push(key);
        Ok(id)
    }

    /// The kind and words under `id`.
    pub fn get(&self, id: u32) -> Option<(StackKind, &[u64])> {
        self.stacks
            .get(id as usize)
            .map(|(k, w)| (*k, w.as_slice()))
    }

    /// Stacks stored.
    pub fn len(&self) -> usize {
        self.stacks.len()
    }

    /// Whether no stack is stored.
    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
    }

    /// Arena words used (records, headers included).
    pub fn words_used(&self) -> usize {
        self.used
    }

    /// `clear`.
    pub fn clear(&mut self) {
        self.used = 0;
        self.ids.clear();
        self.stacks.clear();
    }
}

/// One fuzz input.
#[derive(Arbitrary, Debug, Clone, Default)]
pub struct Input {
    /// The configuration.
    pub cfg: CfgSel,
    /// What to do.
    pub ops: Vec<Op>,
}

/// Selector bytes for a [`DepotConfig`]; see [`CfgSel::cfg`].
#[derive(Arbitrary, Debug, Clone, Copy, Default)]
pub struct CfgSel {
    /// Capacity: `1 + c % 64` mostly; 0 and out-of-range values sometimes.
    pub capacity: u8,
    /// Arena words: `2 + a % 400` mostly; 0, 1 and too many sometimes.
    pub arena: u16,
    /// CPUs: `1 + n % 4`; 0 for 255.
    pub cpus: u8,
    /// The hash seed.
    pub seed: u64,
    /// Where the memory comes from: 0..=191 `StackDepot::new`, else
    /// `new_in` at misalignment `s % 8` (255: no memory at all).
    pub storage: u8,
}

impl CfgSel {
    /// The configuration the selectors pick.
    pub fn cfg(&self) -> DepotConfig {
        let capacity = match self.capacity {
            250 => 0,
            251 => MAX_CAPACITY + 1,
            252 => u32::MAX,
            c => 1 + c as u32 % 64,
        };
        let arena_words = match self.arena {
            0xfff0 => 0,
            0xfff1 => 1,
            0xfff2 => MAX_ARENA_WORDS + 1,
            0xfff3 => usize::MAX,
            a => 2 + a as usize % 400,
        };
        let nr_cpus = match self.cpus {
            255 => 0,
            n => 1 + n as usize % 4,
        };
        DepotConfig {
            capacity,
            arena_words,
            nr_cpus,
            seed: self.seed,
        }
    }
}

/// A stack: `len` frames, each picked from a small alphabet by the bits of
/// `pick`, so that equal stacks and shared prefixes are common.
#[derive(Arbitrary, Debug, Clone, Copy, Default)]
pub struct StackSel {
    /// Frames: `len % 9` (0 is an empty stack: `Inval`); 200 and above:
    /// a long stack of `len` frames.
    pub len: u8,
    /// Frame choices, 2 bits each (cycled for long stacks).
    pub pick: u16,
}

/// The frame alphabet; the last one is `u64::MAX` on purpose.
const IPS: [u64; 4] = [0x1000, 0xffff_ffff_8100_0000, 0, u64::MAX];

impl StackSel {
    /// The ips the selector picks.
    pub fn ips(&self) -> Vec<u64> {
        let n = if self.len >= 200 {
            self.len as usize
        } else {
            self.len as usize % 9
        };
        (0..n)
            .map(|i| IPS[((self.pick >> ((i % 8) * 2)) & 3) as usize])
            .collect()
    }

    /// Build-id frames the selector picks: status, id byte and offset from
    /// the same choices (so their words can equal an ips stack's).
    pub fn build_ids(&self) -> Vec<StackBuildId> {
        self.ips()
            .iter()
            .map(|&ip| {
                if ip & 1 == 0 && ip != 0 {
                    let mut id = [0u8; 20];
                    id[0] = (ip >> 12) as u8;
                    StackBuildId::valid(id, ip)
                } else {
                    StackBuildId::from_ip(ip)
                }
            })
            .collect()
    }
}

/// One operation.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// `intern(cpu, ips)`.
    Intern {
        /// The CPU (any value: it is taken modulo `nr_cpus`).
        cpu: u8,
        /// The stack.
        stack: StackSel,
    },
    /// `intern_build_ids(cpu, frames)`.
    InternBuildIds {
        /// The CPU.
        cpu: u8,
        /// The stack.
        stack: StackSel,
    },
    /// `intern` of the words an earlier build-id stack is stored as: the
    /// same words, another kind, so another stack.
    InternWordsOf {
        /// The id (modulo the stacks stored, if any).
        id: u8,
    },
    /// `get`, `get_build_ids` and `kind` of an id.
    Get {
        /// The id (any value: out-of-range ids are asked too).
        id: u32,
    },
    /// `iter` against the model's list, and `len`.
    Iter,
    /// `stats` against the model.
    Stats,
    /// `clear`.
    Clear,
}

fn check_eq<T: PartialEq + std::fmt::Debug>(what: &str, step: usize, got: T, want: T) {
    assert_eq!(got, want, "step {step}: {what}");
}

/// The full comparison of a depot with the model.
fn check_all(d: &StackDepotIn<'_>, m: &Model, step: usize) {
    let got: Vec<(u32, Vec<u64>)> = d.iter().map(|(id, w)| (id, w.to_vec())).collect();
    let want: Vec<(u32, Vec<u64>)> = (0..m.len() as u32)
        .map(|id| (id, m.get(id).map(|(_, w)| w.to_vec()).unwrap_or_default()))
        .collect();
    check_eq("iter", step, got, want);
    check_eq("len", step, d.len(), m.len());
    check_eq("is_empty", step, d.is_empty(), m.is_empty());
    let s = d.stats();
    check_eq("stats.stacks", step, s.stacks, m.len());
    check_eq("stats.ids_used", step, s.ids_used as usize, m.len());
    check_eq("stats.words_used", step, s.words_used, m.words_used());
    check_eq("stats.record_words", step, s.record_words, m.words_used());
    check_eq(
        "stats.wasted",
        step,
        (s.wasted_ids, s.wasted_words, s.lost_races, s.probe_limit),
        (0, 0, 0, 0),
    );
}

fn check_get(d: &StackDepotIn<'_>, m: &Model, id: u32, step: usize) {
    let want = m.get(id);
    check_eq("get", step, d.get(id), want.map(|(_, w)| w));
    check_eq("kind", step, d.kind(id), want.map(|(k, _)| k));
    let typed = d.get_build_ids(id).map(|f| f.to_vec());
    let want_typed = match want {
        Some((StackKind::BuildIds, w)) => Some(
            w.chunks_exact(4)
                .map(|c| {
                    let mut b = [0u8; 32];
                    for (dst, x) in b.chunks_exact_mut(8).zip(c) {
                        dst.copy_from_slice(&x.to_ne_bytes());
                    }
                    zerocopy::transmute!(b)
                })
                .collect::<Vec<StackBuildId>>(),
        ),
        _ => None,
    };
    check_eq("get_build_ids", step, typed, want_typed);
}

/// Runs one input: panics on any disagreement.
pub fn run(input: &Input) {
    let cfg = input.cfg.cfg();
    let model = Model::new(&cfg);
    let size = StackDepot::storage_size(&cfg);
    check_eq(
        "storage_size",
        0,
        size.map(|_| ()),
        model.as_ref().map(|_| ()).map_err(|e| *e),
    );
    let mut model = match model {
        Ok(m) => m,
        Err(e) => {
            check_eq("new", 0, StackDepot::new(&cfg).err(), Some(e));
            let mut mem = [MaybeUninit::uninit(); 64];
            check_eq(
                "new_in",
                0,
                StackDepotIn::new_in(&cfg, &mut mem).err(),
                Some(e),
            );
            return;
        }
    };
    let need = size.expect("valid config");
    let mut mem: Vec<MaybeUninit<u8>>;
    let mut d: StackDepotIn<'_> = match input.cfg.storage {
        0..=191 => StackDepot::new(&cfg).expect("valid config"),
        255 => {
            let got = StackDepotIn::new_in(&cfg, &mut []).err();
            check_eq("new_in with no memory", 0, got, Some(Error::NoMem));
            return;
        }
        s => {
            let off = s as usize % 8;
            mem = vec![MaybeUninit::uninit(); need + off];
            // storage_size is the block plus at most 127 bytes of slack
            // for alignment: 128 bytes short never fits.
            let short = StackDepotIn::new_in(&cfg, &mut mem[off..need + off - 128]).err();
            check_eq("new_in 128 bytes short", 0, short, Some(Error::NoMem));
            StackDepotIn::new_in(&cfg, &mut mem[off..]).expect("storage_size bytes")
        }
    };
    assert!(d.mem_usage() >= cfg.arena_words * 8);
    check_eq("capacity", 0, d.capacity(), cfg.capacity);

    for (step, op) in input.ops.iter().take(MAX_OPS).enumerate() {
        match op {
            Op::Intern { cpu, stack } => {
                let ips = stack.ips();
                let got = d.intern(*cpu as usize, &ips);
                check_eq("intern", step, got, model.intern(StackKind::Ips, &ips));
                if let Ok(id) = got {
                    assert!(id < cfg.capacity);
                    check_eq("get after intern", step, d.get(id), Some(&ips[..]));
                }
            }
            Op::InternBuildIds { cpu, stack } => {
                let frames = stack.build_ids();
                let words: Vec<u64> = frames
                    .iter()
                    .flat_map(|f| {
                        let b: [u8; 32] = zerocopy::transmute!(*f);
                        let mut w = [0u64; 4];
                        for (x, c) in w.iter_mut().zip(b.chunks_exact(8)) {
                            *x = u64::from_ne_bytes(c.try_into().unwrap());
                        }
                        w
                    })
                    .collect();
                let got = d.intern_build_ids(*cpu as usize, &frames);
                check_eq(
                    "intern_build_ids",
                    step,
                    got,
                    model.intern(StackKind::BuildIds, &words),
                );
                if let Ok(id) = got {
                    check_eq(
                        "get_build_ids after intern",
                        step,
                        d.get_build_ids(id),
                        Some(&frames[..]),
                    );
                }
            }
            Op::InternWordsOf { id } => {
                if model.is_empty() {
                    continue;
                }
                let id = *id as u32 % model.len() as u32;
                let words = model.get(id).map(|(_, w)| w.to_vec()).unwrap_or_default();
                let got = d.intern(0, &words);
                check_eq(
                    "intern(words of)",
                    step,
                    got,
                    model.intern(StackKind::Ips, &words),
                );
            }
            Op::Get { id } => {
                // Mostly ids near the stored ones.
                let id = if *id >= 0x1_0000 { *id } else { *id % 80 };
                check_get(&d, &model, id, step);
            }
            Op::Iter | Op::Stats => check_all(&d, &model, step),
            Op::Clear => {
                d.clear();
                model.clear();
                check_all(&d, &model, step);
            }
        }
    }
    check_all(&d, &model, usize::MAX);
    for id in 0..=model.len() as u32 {
        check_get(&d, &model, id, usize::MAX);
    }
}

//! Threads hammer a small map with every operation at once; afterwards
//! the map must be consistent (every stored stack lives under its own id)
//! and conserve its elements, checked both by `audit` and through the
//! public API: delete everything, then `max_entries` stacks with distinct
//! ids must all insert without ENOMEM (no element leaked).
//!
//! During the run, every `get_stackid` answer is checked against a lookup
//! of its id, whenever no operation that can remove a stack (delete,
//! lookup_and_delete, an insert with REUSE_STACKID) touched that bucket
//! between the call and the lookup: then `Ok(id)` must mean the bucket
//! holds exactly the stack asked for, and EEXIST that it holds another.
//! Each bucket has two counters (removals started and finished) that
//! every removal bumps before and after itself, so a checker knows when
//! its window was quiet.

use std::sync::atomic::{
    AtomicU64,
    Ordering::{Relaxed, SeqCst},
};

use kstackmap::uapi::{BPF_F_FAST_STACK_CMP, BPF_F_REUSE_STACKID};
use kstackmap::{trace_hash, Config, Error, MapAttr, StackMap};

const MAX_ENTRIES: u32 = 24;
const FRAMES: usize = 6;

/// A pool stack: 1..=FRAMES non-zero frames.
fn pool_stack(i: u64) -> Vec<u64> {
    (0..i % FRAMES as u64 + 1)
        .map(|k| 0x4000_0000 + i * 0x1000 + k * 8 + 1)
        .collect()
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn value_ips(v: &[u8]) -> Vec<u64> {
    let ips = v
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()));
    ips.take_while(|&ip| ip != 0).collect()
}

/// Whether a looked-up value is a whole pool stack stored under its own
/// id. Anything else (all zeros, a mixture, a stack of another bucket) is
/// a torn or misplaced read, to be counted, not to panic on.
fn well_formed(v: &[u8], id: u32, n_buckets: u32) -> bool {
    let ips = value_ips(v);
    let Some(i) = ips
        .first()
        .and_then(|ip| ip.checked_sub(0x4000_0001))
        .map(|d| d / 0x1000)
    else {
        return false;
    };
    ips == pool_stack(i) && trace_hash(&ips) & (n_buckets - 1) == id
}

/// Per bucket: how many removals (delete, lookup_and_delete, REUSE
/// insert) started and finished on it.
struct Removals {
    started: Vec<AtomicU64>,
    finished: Vec<AtomicU64>,
}

impl Removals {
    fn new(n: u32) -> Self {
        let zeros = || (0..n).map(|_| AtomicU64::new(0)).collect();
        Removals {
            started: zeros(),
            finished: zeros(),
        }
    }

    /// Runs `f`, a removal on bucket `id`, between the two counts.
    fn around<T>(&self, id: u32, f: impl FnOnce() -> T) -> T {
        self.started[id as usize].fetch_add(1, SeqCst);
        let out = f();
        self.finished[id as usize].fetch_add(1, SeqCst);
        out
    }

    /// A checker's start: `Some(started)` when no removal is in progress.
    fn quiet_start(&self, id: u32) -> Option<u64> {
        let finished = self.finished[id as usize].load(SeqCst);
        let started = self.started[id as usize].load(SeqCst);
        (finished == started).then_some(started)
    }

    /// Whether no removal but the checker's own `own` started since.
    fn still_quiet(&self, id: u32, start: Option<u64>, own: u64) -> bool {
        start == Some(self.started[id as usize].load(SeqCst) - own)
    }
}

#[test]
fn hammer_then_conserve() {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8)
        * 2;
    let ops_per_thread: u64 = if cfg!(debug_assertions) {
        100_000
    } else {
        1_000_000
    };
    let attr = MapAttr {
        max_entries: MAX_ENTRIES,
        value_size: 8 * FRAMES as u32,
        ..MapAttr::default()
    };
    let mut map = StackMap::with_config(
        &attr,
        Config {
            nr_cpus: 4,
            ..Config::default()
        },
    )
    .unwrap();
    let torn = AtomicU64::new(0);
    let wrong_id = AtomicU64::new(0);
    let checked = AtomicU64::new(0);
    let n_buckets = map.n_buckets();
    let removals = Removals::new(n_buckets);
    // FAST_STACK_CMP hits on the hash alone: with no two pool stacks of one
    // hash, a hash hit is a stack hit, so it is checked like the others.
    let hashes: std::collections::HashSet<u32> =
        (0..64).map(|i| trace_hash(&pool_stack(i))).collect();
    assert_eq!(hashes.len(), 64);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (map, torn, wrong_id, checked, removals) =
                (&map, &torn, &wrong_id, &checked, &removals);
            s.spawn(move || {
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ ((t as u64 + 1) * 0x1234_5678);
                let mut v = [0u8; 8 * FRAMES];
                for _ in 0..ops_per_thread {
                    let r = xorshift(&mut rng);
                    let cpu = (r >> 60) as usize;
                    let stack = pool_stack((r >> 32) & 63);
                    let id = (r >> 8) as u32 % n_buckets;
                    match r % 8 {
                        0..=2 => {
                            let flags = [0, BPF_F_REUSE_STACKID, BPF_F_FAST_STACK_CMP]
                                [(r >> 20) as usize % 3];
                            let home = trace_hash(&stack) & (n_buckets - 1);
                            let reuse = flags == BPF_F_REUSE_STACKID;
                            let start = removals.quiet_start(home);
                            let got = if reuse {
                                removals.around(home, || map.get_stackid(cpu, &stack, flags))
                            } else {
                                map.get_stackid(cpu, &stack, flags)
                            };
                            let seen = map.lookup(home, &mut v).map(|()| value_ips(&v));
                            let quiet = removals.still_quiet(home, start, u64::from(reuse));
                            let right = match &got {
                                Ok(got) if *got != home => false,
                                // The bucket held this stack during the call and
                                // nothing removed it since.
                                Ok(_) => !quiet || seen.as_ref() == Ok(&stack),
                                // Another stack held the bucket, and still does.
                                Err(Error::Exist) => {
                                    !quiet || seen.as_ref().is_ok_and(|s| *s != stack)
                                }
                                Err(Error::NoMem) => true,
                                Err(e) => panic!("get_stackid: {e:?}"),
                            };
                            if !right {
                                wrong_id.fetch_add(1, Relaxed);
                            } else if quiet && got.is_ok() {
                                checked.fetch_add(1, Relaxed);
                            }
                        }
                        3..=5 => {
                            if map.lookup(id, &mut v).is_ok() && !well_formed(&v, id, n_buckets) {
                                torn.fetch_add(1, Relaxed);
                            }
                        }
                        6 => {
                            let _ = removals.around(id, || map.delete(id));
                        }
                        _ => {
                            let _ = removals.around(id, || map.lookup_and_delete(id, &mut v));
                        }
                    }
                }
            });
        }
    });
    println!(
        "{} get_stackid answers checked against a lookup in a quiet window",
        checked.load(Relaxed)
    );
    assert_eq!(torn.load(Relaxed), 0, "torn or misplaced lookups");
    assert_eq!(
        wrong_id.load(Relaxed),
        0,
        "get_stackid answers (ids or EEXIST) that the bucket contradicts"
    );
    assert!(checked.load(Relaxed) > 0, "no answer was ever checked");
    let (used, free) = map.audit().expect("conservation");
    assert_eq!(used + free, MAX_ENTRIES as usize);

    // Through the public API: empty the map...
    while let Ok(id) = map.get_next_key(None) {
        map.delete(id).unwrap();
    }
    // ...then max_entries stacks with distinct ids must all fit.
    let mut ids = std::collections::HashSet::new();
    let mut inserted = 0;
    for i in 0u64.. {
        let stack = [0x7000_0000 + i];
        if ids.insert(trace_hash(&stack) & (map.n_buckets() - 1)) {
            assert!(map.get_stackid(0, &stack, 0).is_ok(), "element leaked");
            inserted += 1;
            if inserted == MAX_ENTRIES {
                break;
            }
        }
    }
    assert_eq!(map.audit(), Ok((MAX_ENTRIES as usize, 0)));
}

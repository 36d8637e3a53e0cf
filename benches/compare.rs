//! kstackmap against its peers, every peer in this process on the same
//! workload. Run with `cargo bench --bench compare`; turn the results into
//! one table with `cargo run --release --example bench_report`.
//!
//! Peers (see `peers.rs`): `kstackmap` (its `StackMap`, ips map), `kernel`
//! (a port of the kernel's design with spinlocked per-CPU freelists,
//! `kernel_port.rs`), `mutex` (`Mutex<HashMap<Vec<u64>, u32>>`), `dashmap`,
//! `papaya`, and for the hit path the `floor` (one jhash2 + one compare).
//!
//! Workloads, each at 1, 2, 4 and 8 threads (this machine has 2 cores: 4
//! and 8 oversubscribe it, so a lock holder can be preempted):
//! - `hit`: 4,096 resident stacks of depth 32 with distinct ids, looked up
//!   in a random order (flags 0).
//! - `churn`: 2,048 pairs of depth-32 stacks, both of a pair in one
//!   bucket; each call alternates the pair with `BPF_F_REUSE_STACKID`, so
//!   every call pops an element, publishes it and pushes the old one (hash
//!   maps: remove + insert). The pairs are split among the threads.
//! - `lookup`: N reader threads copy stacks out by id while one extra
//!   writer thread churns the same buckets; the readers' ops are timed.
//! - `mix`: a pool of 10,000 stacks of depth 5..=64, Zipf(1.0) over the
//!   pool, `BPF_F_REUSE_STACKID`, map of 16,384 entries.
//! - `replay` (1 and 2 threads): the recorded call chains of a busy
//!   machine (`benches/data/chains.txt.gz`), every sample once, from an
//!   empty structure: `intern` (the stack maps: `get_stackid` with flags 0,
//!   whose refusals are dropped samples; hash maps: get or insert with a
//!   counter's next id). One criterion iteration is one whole pass (the
//!   samples dealt round-robin to the threads); the structure is built
//!   before and dropped after the timed part.
//!
//! - `steal` (2, 4 and 8 threads; the stack maps only): one thread drains
//!   with `lookup_and_delete` on CPU 0 while the others insert on the other
//!   CPUs, their own share of the freelist used up (see `steal_peer`).
//!
//! The `depot` peer (`StackDepot`) runs in `hit` and `mix` (where it never
//! evicts: 16,384 stacks, 48 words each) and `replay` (65,536 stacks,
//! 2^20 words).
//!
//! Peers run back to back for each (workload, threads) cell, so the cells
//! compared in one row are measured close together in time (the machine's
//! load drifts).
//!
//! Multi-threaded timing: `iter_custom` runs `iters` ops on each of the
//! threads (started together at a barrier) and reports wall time /
//! threads, so every number is aggregate ns per op: the inverse of total
//! throughput.

// `criterion_group!` defines a pub fn without docs.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

mod kernel_port;
mod peers;
mod workload;

use kernel_port::KernelPort;
use peers::{
    DashMapPeer, DepotPeer, Floor, KStackMap, MutexHashMap, PapayaPeer, Params, Peer, StackIdMap,
    StackMapPeer,
};
use workload::Rng;

const THREADS: [usize; 4] = [1, 2, 4, 8];
const MAX_ENTRIES: u32 = 16_384;
/// 127 ips: the kernel's default `perf_event_max_stack`.
const VALUE_SIZE: u32 = 127 * 8;
/// Length of each thread's pre-drawn index sequence (a power of two).
const SEQ_LEN: usize = 1 << 16;
const HIT_STACKS: usize = 4_096;
const CHURN_PAIRS: usize = 2_048;
const DEPTH: usize = 32;
const MIX_POOL: usize = 10_000;
const ZIPF_S: f64 = 1.0;

fn nr_cpus() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

fn params() -> Params {
    Params {
        max_entries: MAX_ENTRIES,
        value_size: VALUE_SIZE,
        nr_cpus: nr_cpus(),
    }
}

/// Runs `f(thread, iters)` on `threads` threads started together; returns
/// wall time / threads (aggregate time per op once criterion divides by
/// `iters`).
fn run_parallel(threads: usize, iters: u64, f: impl Fn(usize, u64) + Sync) -> Duration {
    let barrier = Barrier::new(threads + 1);
    let mut start = None;
    thread::scope(|s| {
        for t in 0..threads {
            let (barrier, f) = (&barrier, &f);
            s.spawn(move || {
                barrier.wait();
                f(t, iters);
            });
        }
        barrier.wait();
        start = Some(Instant::now());
    });
    start.expect("set in scope").elapsed() / threads as u32
}

/// Like [`run_parallel`], with `background` running on one more thread
/// until the timed threads are done (it gets a stop flag).
fn run_parallel_with(
    threads: usize,
    iters: u64,
    f: impl Fn(usize, u64) + Sync,
    background: impl Fn(&AtomicBool) + Sync,
) -> Duration {
    let barrier = Barrier::new(threads + 2);
    let stop = AtomicBool::new(false);
    let mut elapsed = Duration::ZERO;
    thread::scope(|s| {
        {
            let (barrier, stop, background) = (&barrier, &stop, &background);
            s.spawn(move || {
                barrier.wait();
                background(stop);
            });
        }
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, f) = (&barrier, &f);
                s.spawn(move || {
                    barrier.wait();
                    f(t, iters);
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for h in handles {
            h.join().expect("reader thread");
        }
        elapsed = start.elapsed();
        stop.store(true, Ordering::Relaxed);
    });
    elapsed / threads as u32
}

/// Per-thread pre-drawn index sequences.
fn sequences(threads: usize, seed: u64, draw: impl Fn(&mut Rng) -> Vec<u32>) -> Vec<Vec<u32>> {
    (0..threads)
        .map(|t| draw(&mut Rng::new(seed ^ ((t as u64 + 1) * 0x1234_5678_9abc))))
        .collect()
}

// ---------------------------------------------------------------- hit path

fn hit_peer<P: Peer>(c: &mut Criterion, name: &str, pool: &[Vec<u64>], threads: usize) {
    let mut group = c.benchmark_group("hit");
    group.throughput(Throughput::Elements(1));
    {
        let p = params();
        let map = P::build(&p);
        for (i, s) in pool.iter().enumerate() {
            map.mix(i % p.nr_cpus, s);
        }
        for s in pool {
            assert!(map.hit(0, s).is_some(), "{name}: pool stack not resident");
        }
        let seqs = sequences(threads, 1, |r| {
            workload::uniform_sequence(r, pool.len(), SEQ_LEN)
        });
        group.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &threads| {
            b.iter_custom(|iters| {
                run_parallel(threads, iters, |t, iters| {
                    let (seq, cpu) = (&seqs[t], t % p.nr_cpus);
                    for i in 0..iters as usize {
                        let s = &pool[seq[i & (SEQ_LEN - 1)] as usize];
                        black_box(map.hit(cpu, black_box(s)));
                    }
                })
            })
        });
    }
    group.finish();
}

fn hit_floor(c: &mut Criterion, pool: &[Vec<u64>], threads: usize) {
    let mut group = c.benchmark_group("hit");
    group.throughput(Throughput::Elements(1));
    let floor = Floor::build(&params(), pool);
    for s in pool {
        assert!(floor.hit(s).is_some());
    }
    {
        let seqs = sequences(threads, 1, |r| {
            workload::uniform_sequence(r, pool.len(), SEQ_LEN)
        });
        group.bench_with_input(
            BenchmarkId::new("floor", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    run_parallel(threads, iters, |t, iters| {
                        let seq = &seqs[t];
                        for i in 0..iters as usize {
                            let s = &pool[seq[i & (SEQ_LEN - 1)] as usize];
                            black_box(floor.hit(black_box(s)));
                        }
                    })
                })
            },
        );
    }
    group.finish();
}

fn bench_hit(c: &mut Criterion) {
    let p = params();
    let pool = workload::distinct_id_pool(&mut Rng::new(7), HIT_STACKS, DEPTH, p.n_buckets());
    for threads in THREADS {
        hit_floor(c, &pool, threads);
        hit_peer::<StackMapPeer<KStackMap>>(c, "kstackmap", &pool, threads);
        hit_peer::<DepotPeer>(c, "depot", &pool, threads);
        hit_peer::<StackMapPeer<KernelPort>>(c, "kernel", &pool, threads);
        hit_peer::<MutexHashMap>(c, "mutex", &pool, threads);
        hit_peer::<DashMapPeer>(c, "dashmap", &pool, threads);
        hit_peer::<PapayaPeer>(c, "papaya", &pool, threads);
    }
}

// ------------------------------------------------------------------- churn

/// Thread `t`'s share of the pairs.
fn share(t: usize, threads: usize, n: usize) -> std::ops::Range<usize> {
    let per = n / threads;
    t * per..(t + 1) * per
}

/// One churn op on pair `k`'s round: `round` even puts A in (B was there).
#[inline]
fn churn_op<P: Peer>(map: &P, cpu: usize, pair: &(Vec<u64>, Vec<u64>), round: u64) {
    let (old, new) = if round & 1 == 0 {
        (&pair.1, &pair.0)
    } else {
        (&pair.0, &pair.1)
    };
    black_box(map.replace(cpu, old, black_box(new)));
}

fn churn_peer<P: Peer>(
    c: &mut Criterion,
    name: &str,
    pairs: &[(Vec<u64>, Vec<u64>)],
    threads: usize,
) {
    let mut group = c.benchmark_group("churn");
    group.throughput(Throughput::Elements(1));
    {
        let p = params();
        let map = P::build(&p);
        for (i, pair) in pairs.iter().enumerate() {
            map.mix(i % p.nr_cpus, &pair.1);
        }
        // Each thread's op counter, kept across criterion's calls so the
        // A/B alternation (and so "every call replaces") never breaks.
        let pos: Vec<AtomicU64> = (0..threads).map(|_| AtomicU64::new(0)).collect();
        group.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &threads| {
            b.iter_custom(|iters| {
                run_parallel(threads, iters, |t, iters| {
                    let mine = &pairs[share(t, threads, pairs.len())];
                    let n = mine.len() as u64;
                    let cpu = t % p.nr_cpus;
                    let k0 = pos[t].load(Ordering::Relaxed);
                    for k in k0..k0 + iters {
                        churn_op(&map, cpu, &mine[(k % n) as usize], k / n);
                    }
                    pos[t].store(k0 + iters, Ordering::Relaxed);
                })
            })
        });
    }
    group.finish();
}

fn bench_churn(c: &mut Criterion) {
    let p = params();
    let pairs = workload::colliding_pairs(&mut Rng::new(11), CHURN_PAIRS, DEPTH, p.n_buckets());
    for threads in THREADS {
        churn_peer::<StackMapPeer<KStackMap>>(c, "kstackmap", &pairs, threads);
        churn_peer::<StackMapPeer<KernelPort>>(c, "kernel", &pairs, threads);
        churn_peer::<MutexHashMap>(c, "mutex", &pairs, threads);
        churn_peer::<DashMapPeer>(c, "dashmap", &pairs, threads);
        churn_peer::<PapayaPeer>(c, "papaya", &pairs, threads);
    }
}

// ------------------------------------------------------------------ lookup

fn lookup_peer<P: Peer>(
    c: &mut Criterion,
    name: &str,
    pairs: &[(Vec<u64>, Vec<u64>)],
    threads: usize,
) {
    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(1));
    let p = params();
    let n_buckets = p.n_buckets();
    let ids: Vec<u32> = pairs
        .iter()
        .map(|(a, _)| workload::id_of(a, n_buckets))
        .collect();
    {
        let map = P::build(&p);
        for (i, pair) in pairs.iter().enumerate() {
            map.mix(i % p.nr_cpus, &pair.1);
        }
        let seqs = sequences(threads, 3, |r| {
            workload::uniform_sequence(r, pairs.len(), SEQ_LEN)
        });
        let writer_pos = AtomicU64::new(0);
        group.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &threads| {
            b.iter_custom(|iters| {
                run_parallel_with(
                    threads,
                    iters,
                    |t, iters| {
                        let (seq, cpu) = (&seqs[t], t % p.nr_cpus);
                        let mut buf = vec![0u8; VALUE_SIZE as usize];
                        for i in 0..iters as usize {
                            let j = seq[i & (SEQ_LEN - 1)] as usize;
                            let stack = if i & 1 == 0 { &pairs[j].0 } else { &pairs[j].1 };
                            black_box(map.read(cpu, ids[j], stack, &mut buf));
                        }
                    },
                    |stop| {
                        let n = pairs.len() as u64;
                        let cpu = threads % p.nr_cpus;
                        let mut k = writer_pos.load(Ordering::Relaxed);
                        while !stop.load(Ordering::Relaxed) {
                            churn_op(&map, cpu, &pairs[(k % n) as usize], k / n);
                            k += 1;
                        }
                        writer_pos.store(k, Ordering::Relaxed);
                    },
                )
            })
        });
    }
    group.finish();
}

fn bench_lookup(c: &mut Criterion) {
    let p = params();
    let pairs = workload::colliding_pairs(&mut Rng::new(13), CHURN_PAIRS, DEPTH, p.n_buckets());
    for threads in THREADS {
        lookup_peer::<StackMapPeer<KStackMap>>(c, "kstackmap", &pairs, threads);
        lookup_peer::<StackMapPeer<KernelPort>>(c, "kernel", &pairs, threads);
        lookup_peer::<MutexHashMap>(c, "mutex", &pairs, threads);
        lookup_peer::<DashMapPeer>(c, "dashmap", &pairs, threads);
        lookup_peer::<PapayaPeer>(c, "papaya", &pairs, threads);
    }
}

// --------------------------------------------------------------------- mix

fn mix_peer<P: Peer>(c: &mut Criterion, name: &str, pool: &[Vec<u64>], threads: usize) {
    let mut group = c.benchmark_group("mix");
    group.throughput(Throughput::Elements(1));
    let p = params();
    {
        let map = P::build(&p);
        let seqs = sequences(threads, 5, |r| {
            workload::zipf_sequence(r, pool.len(), ZIPF_S, SEQ_LEN)
        });
        // Warm the map with one pass of thread 0's sequence.
        for &i in &seqs[0] {
            map.mix(0, &pool[i as usize]);
        }
        group.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &threads| {
            b.iter_custom(|iters| {
                run_parallel(threads, iters, |t, iters| {
                    let (seq, cpu) = (&seqs[t], t % p.nr_cpus);
                    for i in 0..iters as usize {
                        let s = &pool[seq[i & (SEQ_LEN - 1)] as usize];
                        black_box(map.mix(cpu, black_box(s)));
                    }
                })
            })
        });
    }
    group.finish();
}

fn bench_mix(c: &mut Criterion) {
    let pool = workload::mixed_depth_pool(&mut Rng::new(17), MIX_POOL, 5, 64);
    for threads in THREADS {
        mix_peer::<StackMapPeer<KStackMap>>(c, "kstackmap", &pool, threads);
        mix_peer::<DepotPeer>(c, "depot", &pool, threads);
        mix_peer::<StackMapPeer<KernelPort>>(c, "kernel", &pool, threads);
        mix_peer::<MutexHashMap>(c, "mutex", &pool, threads);
        mix_peer::<DashMapPeer>(c, "dashmap", &pool, threads);
        mix_peer::<PapayaPeer>(c, "papaya", &pool, threads);
    }
}

// ------------------------------------------------------------------ replay

const REPLAY_THREADS: [usize; 2] = [1, 2];
const REPLAY_CAPACITY: u32 = 65_536;
const REPLAY_ARENA_WORDS: usize = 1 << 20;

/// One pass over `chains` from a fresh `build()`, the samples dealt
/// round-robin to `threads` threads; returns (wall time, refused samples).
fn replay_pass<P: Peer>(p: &P, chains: &[Vec<u64>], threads: usize) -> (Duration, u64) {
    let drops = AtomicU64::new(0);
    let cpus = nr_cpus();
    let per_thread = run_parallel(threads, 1, |t, _| {
        let mut d = 0;
        for s in chains.iter().skip(t).step_by(threads) {
            if black_box(p.intern(t % cpus, black_box(s))).is_none() {
                d += 1;
            }
        }
        drops.fetch_add(d, Ordering::Relaxed);
    });
    (per_thread * threads as u32, drops.into_inner())
}

fn replay_peer<P: Peer>(
    c: &mut Criterion,
    name: &str,
    chains: &[Vec<u64>],
    threads: usize,
    build: impl Fn() -> P,
    after: impl Fn(&P),
) {
    // One untimed pass for the report: refused samples, and whatever
    // `after` prints (the depot's memory).
    let p = build();
    let (_, drops) = replay_pass(&p, chains, threads);
    println!(
        "replay {name} threads {threads}: {drops} of {} samples refused ({:.1}%)",
        chains.len(),
        100.0 * drops as f64 / chains.len() as f64
    );
    after(&p);
    drop(p);
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(chains.len() as u64));
    group.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &threads| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let p = build();
                total += replay_pass(&p, chains, threads).0;
            }
            total
        })
    });
    group.finish();
}

fn bench_replay(c: &mut Criterion) {
    let chains = workload::recorded_chains();
    let distinct: std::collections::HashSet<&Vec<u64>> = chains.iter().collect();
    let frames: usize = chains.iter().map(Vec::len).sum();
    println!(
        "replay: {} samples, {} distinct stacks, mean depth {:.2}",
        chains.len(),
        distinct.len(),
        frames as f64 / chains.len() as f64
    );
    let p = params();
    for threads in REPLAY_THREADS {
        replay_peer(
            c,
            "depot",
            &chains,
            threads,
            || DepotPeer::with(REPLAY_CAPACITY, REPLAY_ARENA_WORDS, p.nr_cpus),
            |d| {
                let s = d.0.stats();
                let frames = s.record_words - s.stacks;
                println!(
                    "replay depot: {} stacks, {} frames; records {} B = {:.3} x (8 B x frames + 16 B x stacks); \
                     mem_usage {} B; lost races {}, wasted words {}",
                    s.stacks,
                    frames,
                    s.record_words * 8,
                    (s.record_words * 8) as f64 / (8 * frames + 16 * s.stacks) as f64,
                    d.0.mem_usage(),
                    s.lost_races,
                    s.wasted_words
                );
            },
        );
        replay_peer(
            c,
            "kstackmap",
            &chains,
            threads,
            || StackMapPeer::<KStackMap>::build(&p),
            |_| {},
        );
        replay_peer(
            c,
            "mutex",
            &chains,
            threads,
            || MutexHashMap::build(&p),
            |_| {},
        );
        replay_peer(
            c,
            "dashmap",
            &chains,
            threads,
            || DashMapPeer::build(&p),
            |_| {},
        );
        replay_peer(
            c,
            "papaya",
            &chains,
            threads,
            || PapayaPeer::build(&p),
            |_| {},
        );
    }
}

// ------------------------------------------------------------------- steal

/// Stacks in the `steal` pool: half the buckets, with distinct ids, so the
/// pre-fill uses up the inserters' CPU's whole share of the freelist.
const STEAL_STACKS: usize = MAX_ENTRIES as usize / 2;

/// `steal`: thread 0 drains on CPU 0 with `lookup_and_delete` (a reader
/// emptying the map as it goes) while threads 1.. insert on the other CPUs
/// with `get_stackid` (flags 0: a hit, or a store into a drained bucket).
/// Every pool stack was stored from the inserters' CPU first, so its share
/// of the freelist is used up: the kernel design's inserters then pop
/// what the drainer pushed onto CPU 0's list (steals, each behind CPU 0's
/// spinlock); kstackmap gives a drained slot back to the shard it came
/// from (`StackMap::delete`'s home shard), so its pops are local. All
/// threads are timed; afterwards the share of inserter calls that stored
/// is printed (the drainer's successes, each emptying one bucket).
fn steal_peer<M: StackIdMap>(
    c: &mut Criterion,
    name: &str,
    pool: &[Vec<u64>],
    ids: &[u32],
    threads: usize,
) {
    let mut group = c.benchmark_group("steal");
    group.throughput(Throughput::Elements(1));
    let p = params();
    let map = M::create(&p);
    let inserter_cpu = |t: usize| 1 + (t - 1) % (p.nr_cpus - 1).max(1);
    for s in pool {
        map.get_stackid(inserter_cpu(1), s, 0)
            .expect("steal pool: distinct ids, room for all");
    }
    let seqs = sequences(threads, 9, |r| {
        workload::uniform_sequence(r, pool.len(), SEQ_LEN)
    });
    let (drained, inserter_ops) = (AtomicU64::new(0), AtomicU64::new(0));
    group.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &threads| {
        b.iter_custom(|iters| {
            run_parallel(threads, iters, |t, iters| {
                let seq = &seqs[t];
                if t == 0 {
                    let mut buf = vec![0u8; p.value_size as usize];
                    let mut n = 0;
                    for i in 0..iters as usize {
                        let id = ids[seq[i & (SEQ_LEN - 1)] as usize];
                        n += u64::from(map.lookup_and_delete(0, id, &mut buf).is_ok());
                    }
                    drained.fetch_add(n, Ordering::Relaxed);
                } else {
                    let cpu = inserter_cpu(t);
                    for i in 0..iters as usize {
                        let s = &pool[seq[i & (SEQ_LEN - 1)] as usize];
                        black_box(map.get_stackid(cpu, black_box(s), 0).ok());
                    }
                    inserter_ops.fetch_add(iters, Ordering::Relaxed);
                }
            })
        })
    });
    group.finish();
    let (d, o) = (
        drained.load(Ordering::Relaxed),
        inserter_ops.load(Ordering::Relaxed),
    );
    println!(
        "steal/{name}/{threads}: {:.1}% of inserter calls stored a stack",
        100.0 * d as f64 / o.max(1) as f64
    );
}

fn bench_steal(c: &mut Criterion) {
    let p = params();
    let nb = p.n_buckets();
    let pool = workload::distinct_id_pool(&mut Rng::new(23), STEAL_STACKS, DEPTH, nb);
    let ids: Vec<u32> = pool.iter().map(|s| workload::id_of(s, nb)).collect();
    for threads in [2, 4, 8] {
        steal_peer::<KernelPort>(c, "kernel", &pool, &ids, threads);
        steal_peer::<KStackMap>(c, "kstackmap", &pool, &ids, threads);
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_hit, bench_churn, bench_lookup, bench_mix, bench_replay, bench_steal
}
criterion_main!(benches);

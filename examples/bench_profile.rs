//! One peer, one workload, single-threaded, in a loop: a target for
//! profilers, whose counts do not depend on the machine's load the way
//! timings do.
//!
//! ```text
//! cargo build --release --example bench_profile
//! valgrind --tool=callgrind --toggle-collect='*timed_loop*' \
//!     target/release/examples/bench_profile hit kstackmap 200000
//! perf record -e cpu-clock -g target/release/examples/bench_profile mix kstackmap 20000000
//! ```
//!
//! Workloads and peers as in `benches/compare.rs` (whose modules this
//! example shares); only the ops inside `timed_loop` are the measured part.

#![allow(missing_docs)]

use std::hint::black_box;

// lookup_and_delete is for the multi-threaded `steal` bench only.
#[path = "../benches/kernel_port.rs"]
#[allow(dead_code)]
mod kernel_port;
#[path = "../benches/peers.rs"]
#[allow(dead_code)]
mod peers;
#[path = "../benches/workload.rs"]
mod workload;

use kernel_port::KernelPort;
use peers::{
    DashMapPeer, DepotPeer, Floor, KStackMap, MutexHashMap, PapayaPeer, Params, Peer, StackMapPeer,
};
use workload::Rng;

/// The bench's geometry; `VALUE_SIZE=256` in the environment shrinks the
/// elements (to see what the map's memory footprint costs: TLB, caches).
fn params() -> Params {
    Params {
        max_entries: 16_384,
        value_size: std::env::var("VALUE_SIZE").map_or(127 * 8, |v| v.parse().expect("VALUE_SIZE")),
        nr_cpus: 2,
    }
}
const SEQ_LEN: usize = 1 << 16;

enum Op<'a> {
    Hit(&'a [Vec<u64>], Vec<u32>),
    Churn(&'a [(Vec<u64>, Vec<u64>)]),
    Lookup(&'a [(Vec<u64>, Vec<u64>)], Vec<u32>, Vec<u32>),
    Mix(&'a [Vec<u64>], Vec<u32>),
    Replay(&'a [Vec<u64>]),
}

#[inline(never)]
fn timed_loop<P: Peer>(map: &P, op: &Op<'_>, ops: usize) {
    match op {
        Op::Hit(pool, seq) => {
            for i in 0..ops {
                black_box(map.hit(0, black_box(&pool[seq[i & (SEQ_LEN - 1)] as usize])));
            }
        }
        Op::Churn(pairs) => {
            let n = pairs.len();
            for k in 0..ops {
                let pair = &pairs[k % n];
                let (old, new) = if (k / n) & 1 == 0 {
                    (&pair.1, &pair.0)
                } else {
                    (&pair.0, &pair.1)
                };
                black_box(map.replace(0, old, black_box(new)));
            }
        }
        Op::Lookup(pairs, ids, seq) => {
            let mut buf = vec![0u8; params().value_size as usize];
            for i in 0..ops {
                let j = seq[i & (SEQ_LEN - 1)] as usize;
                black_box(map.read(0, ids[j], &pairs[j].1, &mut buf));
            }
        }
        Op::Mix(pool, seq) => {
            for i in 0..ops {
                black_box(map.mix(0, black_box(&pool[seq[i & (SEQ_LEN - 1)] as usize])));
            }
        }
        Op::Replay(chains) => {
            for i in 0..ops {
                black_box(map.intern(0, black_box(&chains[i % chains.len()])));
            }
        }
    }
}

#[inline(never)]
fn timed_loop_floor(floor: &Floor, pool: &[Vec<u64>], seq: &[u32], ops: usize) {
    for i in 0..ops {
        black_box(floor.hit(black_box(&pool[seq[i & (SEQ_LEN - 1)] as usize])));
    }
}

/// `trace_hash` alone: the part of the floor every stack-map peer pays.
#[inline(never)]
fn timed_loop_jhash(pool: &[Vec<u64>], seq: &[u32], ops: usize) {
    for i in 0..ops {
        black_box(kstackmap::trace_hash(black_box(
            &pool[seq[i & (SEQ_LEN - 1)] as usize],
        )));
    }
}

/// `StackMap` over caller memory that transparent huge pages back
/// (2 MiB-aligned, `madvise(MADV_HUGEPAGE)`): what the element footprint
/// costs in TLB misses.
struct ThpStackMap(kstackmap::StackMap);

impl peers::StackIdMap for ThpStackMap {
    fn create(p: &Params) -> Self {
        const HUGE: usize = 2 << 20;
        let attr = kstackmap::MapAttr {
            max_entries: p.max_entries,
            key_size: 4,
            value_size: p.value_size,
            map_flags: 0,
            numa_node: 0,
        };
        let cfg = kstackmap::Config {
            nr_cpus: p.nr_cpus,
            max_stack: 127,
        };
        let size = kstackmap::StackMap::storage_size(&attr, cfg).expect("attr");
        let size = size.div_ceil(HUGE) * HUGE;
        let layout = std::alloc::Layout::from_size_align(size, HUGE).expect("layout");
        // SAFETY: a non-zero size; the block is leaked (the map lives as
        // long as the process), madvise only advises on memory we own.
        let mem = unsafe {
            let ptr = std::alloc::alloc(layout);
            assert!(!ptr.is_null());
            libc::madvise(ptr.cast(), size, libc::MADV_HUGEPAGE);
            std::slice::from_raw_parts_mut(ptr.cast::<std::mem::MaybeUninit<u8>>(), size)
        };
        ThpStackMap(kstackmap::StackMap::new_in(&attr, cfg, mem).expect("new_in"))
    }
    fn get_stackid(
        &self,
        cpu: usize,
        callchain: &[u64],
        flags: u64,
    ) -> Result<u32, kstackmap::Error> {
        self.0.get_stackid(cpu, callchain, flags)
    }
    fn lookup(&self, _cpu: usize, id: u32, value: &mut [u8]) -> Result<(), kstackmap::Error> {
        self.0.lookup(id, value)
    }
    fn lookup_and_delete(
        &self,
        _cpu: usize,
        id: u32,
        value: &mut [u8],
    ) -> Result<(), kstackmap::Error> {
        self.0.lookup_and_delete(id, value)
    }
}

/// The map `P` with `workload`'s stacks resident, and the op to time.
/// The inputs are leaked: they live as long as the process.
fn setup<P: Peer>(workload: &str) -> (P, Op<'static>) {
    let nb = params().n_buckets();
    let map = P::build(&params());
    let mut rng = Rng::new(1);
    let op = match workload {
        "hit" => {
            let pool = workload::distinct_id_pool(&mut Rng::new(7), 4_096, 32, nb).leak();
            for s in pool.iter() {
                map.mix(0, s);
            }
            let seq = workload::uniform_sequence(&mut rng, pool.len(), SEQ_LEN);
            Op::Hit(pool, seq)
        }
        "churn" => {
            let pairs = workload::colliding_pairs(&mut Rng::new(11), 2_048, 32, nb).leak();
            for p in pairs.iter() {
                map.mix(0, &p.1);
            }
            Op::Churn(pairs)
        }
        "lookup" => {
            let pairs = workload::colliding_pairs(&mut Rng::new(13), 2_048, 32, nb).leak();
            for p in pairs.iter() {
                map.mix(0, &p.1);
            }
            let ids = pairs.iter().map(|p| workload::id_of(&p.0, nb)).collect();
            let seq = workload::uniform_sequence(&mut rng, pairs.len(), SEQ_LEN);
            Op::Lookup(pairs, ids, seq)
        }
        "mix" => {
            let pool = workload::mixed_depth_pool(&mut Rng::new(17), 10_000, 5, 64).leak();
            let seq = workload::zipf_sequence(&mut rng, pool.len(), 1.0, SEQ_LEN);
            for &i in &seq {
                map.mix(0, &pool[i as usize]);
            }
            Op::Mix(pool, seq)
        }
        "replay" => Op::Replay(workload::recorded_chains().leak()),
        other => panic!("unknown workload {other}"),
    };
    (map, op)
}

fn run<P: Peer>(workload: &str, ops: usize) {
    let (map, op) = setup::<P>(workload);
    timed_loop(&map, &op, ops);
}

/// A timed batch runner for [`ab`]: runs `ops` ops, returns ns per op.
type Batch = Box<dyn FnMut(usize) -> f64>;

/// This thread's CPU time in ns (see [`thread_cpu`]).
fn thread_cpu_ns() -> f64 {
    thread_cpu().as_nanos() as f64
}

fn batch<P: Peer + 'static>(workload: &str) -> Batch {
    let (map, op) = setup::<P>(workload);
    Box::new(move |ops| {
        let t = thread_cpu_ns();
        timed_loop(&map, &op, ops);
        (thread_cpu_ns() - t) / ops as f64
    })
}

/// `ab WORKLOAD PEER,PEER,... [BATCHES] [OPS]`: one thread, the peers'
/// batches interleaved (A B C A B C ...), each batch `OPS` ops (default
/// 20,480: ten churn rounds, so every batch starts from the same state).
/// Batches are timed in thread CPU time. Prints each peer's fastest and
/// median batch, and the ratios of the fastest batches to the first
/// peer's: on a loaded machine the fastest of many short batches is the
/// one least disturbed (caches shared with other processes).
fn ab(args: &[String]) {
    let workload = args[2].as_str();
    let peers: Vec<&str> = args[3].split(',').collect();
    let batches: usize = args.get(4).map_or(40, |s| s.parse().expect("batches"));
    let ops: usize = args.get(5).map_or(20_480, |s| s.parse().expect("ops"));
    let mut runners: Vec<Batch> = peers
        .iter()
        .map(|&p| match p {
            "kstackmap" => batch::<StackMapPeer<KStackMap>>(workload),
            "kstackmap-thp" => batch::<StackMapPeer<ThpStackMap>>(workload),
            "kernel" => batch::<StackMapPeer<KernelPort>>(workload),
            "mutex" => batch::<MutexHashMap>(workload),
            "dashmap" => batch::<DashMapPeer>(workload),
            "papaya" => batch::<PapayaPeer>(workload),
            "floor" => {
                assert_eq!(workload, "hit", "the floor is for the hit path");
                let nb = params().n_buckets();
                let pool = workload::distinct_id_pool(&mut Rng::new(7), 4_096, 32, nb);
                let floor = Floor::build(&params(), &pool);
                let seq = workload::uniform_sequence(&mut Rng::new(1), pool.len(), SEQ_LEN);
                Box::new(move |ops| {
                    let t = thread_cpu_ns();
                    timed_loop_floor(&floor, &pool, &seq, ops);
                    (thread_cpu_ns() - t) / ops as f64
                })
            }
            other => panic!("unknown peer {other}"),
        })
        .collect();
    let mut times = vec![Vec::new(); peers.len()];
    for r in runners.iter_mut() {
        r(ops); // warm-up
    }
    for _ in 0..batches {
        for (r, t) in runners.iter_mut().zip(&mut times) {
            t.push(r(ops));
        }
    }
    let mins: Vec<f64> = times
        .iter_mut()
        .map(|t| {
            t.sort_by(f64::total_cmp);
            t[0]
        })
        .collect();
    for (i, p) in peers.iter().enumerate() {
        let t = &times[i];
        println!(
            "{workload} {p}: min {:.1} ns/op, median {:.1}; min / {}'s min = {:.3}",
            t[0],
            t[t.len() / 2],
            peers[0],
            mins[i] / mins[0]
        );
    }
}

/// This thread's CPU time (not wall time: time spent descheduled on a
/// busy machine does not count).
fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `replay-cpu PEER PASSES THREADS`: passes over the recorded chains, each
/// from a fresh structure, the samples dealt round-robin to the threads;
/// prints the median over passes of (CPU time of all threads / samples)
/// and of wall time / samples. CPU time still contains what contention
/// costs (cache-line transfers stall the CPU), not the time other
/// processes take: a load-robust view of a multi-thread pass.
fn replay_cpu<P: Peer>(build: impl Fn() -> P, passes: usize, threads: usize) {
    let chains = workload::recorded_chains();
    let (mut cpu, mut wall) = (Vec::new(), Vec::new());
    for _ in 0..passes {
        let p = build();
        let barrier = std::sync::Barrier::new(threads);
        let start = std::time::Instant::now();
        let total: std::time::Duration = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|t| {
                    let (p, chains, barrier) = (&p, &chains, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        let c0 = thread_cpu();
                        for c in chains.iter().skip(t).step_by(threads) {
                            black_box(p.intern(t, black_box(c)));
                        }
                        thread_cpu() - c0
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        wall.push(start.elapsed().as_nanos() as f64 / chains.len() as f64);
        cpu.push(total.as_nanos() as f64 / chains.len() as f64);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    println!(
        "cpu {:.1} ns/sample, wall {:.1} ns/sample (median of {passes})",
        median(&mut cpu),
        median(&mut wall)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args[1] == "ab" {
        return ab(&args);
    }
    if args[1] == "replay-cpu" {
        let passes = args.get(3).map_or(10, |s| s.parse().expect("passes"));
        let threads = args.get(4).map_or(1, |s| s.parse().expect("threads"));
        let p = params();
        match args[2].as_str() {
            "depot" => replay_cpu(|| DepotPeer::with(65_536, 1 << 20, 2), passes, threads),
            // The arena's pages touched before the pass (a depot that was
            // filled once and cleared): no page faults in the pass.
            "depot-warm" => replay_cpu(
                || {
                    let mut d = DepotPeer::with(65_536, 1 << 20, 2);
                    for i in 0..(1usize << 20) / 64 {
                        let _ = d.0.intern(0, &[i as u64; 63]);
                    }
                    d.0.clear();
                    d
                },
                passes,
                threads,
            ),
            "kstackmap" => replay_cpu(|| StackMapPeer::<KStackMap>::build(&p), passes, threads),
            "mutex" => replay_cpu(|| MutexHashMap::build(&p), passes, threads),
            "dashmap" => replay_cpu(|| DashMapPeer::build(&p), passes, threads),
            "papaya" => replay_cpu(|| PapayaPeer::build(&p), passes, threads),
            other => panic!("unknown peer {other}"),
        }
        return;
    }
    let (workload, peer) = (args[1].as_str(), args[2].as_str());
    let ops: usize = args.get(3).map_or(1_000_000, |s| s.parse().expect("ops"));
    match peer {
        "kstackmap" => run::<StackMapPeer<KStackMap>>(workload, ops),
        "depot" if workload == "replay" => {
            let d = DepotPeer::with(65_536, 1 << 20, params().nr_cpus);
            let chains = workload::recorded_chains();
            timed_loop(&d, &Op::Replay(&chains), ops);
        }
        "depot" => run::<DepotPeer>(workload, ops),
        "kernel" => run::<StackMapPeer<KernelPort>>(workload, ops),
        "kstackmap-thp" => run::<StackMapPeer<ThpStackMap>>(workload, ops),
        "mutex" => run::<MutexHashMap>(workload, ops),
        "dashmap" => run::<DashMapPeer>(workload, ops),
        "papaya" => run::<PapayaPeer>(workload, ops),
        "floor" => {
            let pool =
                workload::distinct_id_pool(&mut Rng::new(7), 4_096, 32, params().n_buckets());
            let floor = Floor::build(&params(), &pool);
            let seq = workload::uniform_sequence(&mut Rng::new(1), pool.len(), SEQ_LEN);
            timed_loop_floor(&floor, &pool, &seq, ops);
        }
        "stats" => {
            // How often a mix call replaces a bucket (a miss) rather than hits.
            let map = StackMapPeer::<KStackMap>::build(&params());
            let pool = workload::mixed_depth_pool(&mut Rng::new(17), 10_000, 5, 64);
            let seq = workload::zipf_sequence(&mut Rng::new(1), pool.len(), 1.0, SEQ_LEN);
            for &i in &seq {
                map.mix(0, &pool[i as usize]);
            }
            let (mut misses, mut depth) = (0, 0);
            for i in 0..ops {
                let s = &pool[seq[i & (SEQ_LEN - 1)] as usize];
                depth += s.len();
                if map.hit(0, s).is_none() {
                    misses += 1;
                    map.mix(0, s);
                }
            }
            println!(
                "mix: {:.1}% of calls replace a bucket; mean depth {:.1}",
                100.0 * misses as f64 / ops as f64,
                depth as f64 / ops as f64
            );
        }
        "jhash" => {
            let pool =
                workload::distinct_id_pool(&mut Rng::new(7), 4_096, 32, params().n_buckets());
            let seq = workload::uniform_sequence(&mut Rng::new(1), pool.len(), SEQ_LEN);
            timed_loop_jhash(&pool, &seq, ops);
        }
        other => panic!("unknown peer {other}"),
    }
}

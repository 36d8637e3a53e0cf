//! Workload generation for `benches/compare.rs`: stacks, pools with known
//! bucket layouts, Zipf sequences. Everything is made before timing starts
//! and is deterministic (fixed seeds), so every peer sees the same inputs.

use kstackmap::trace_hash;

/// splitmix64: small, fast, good enough to pick stacks.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A plausible kernel call chain: `depth` return addresses in kernel text.
pub fn random_stack(rng: &mut Rng, depth: usize) -> Vec<u64> {
    (0..depth)
        .map(|_| 0xffff_ffff_8100_0000 + (rng.next_u64() % 0x0100_0000))
        .collect()
}

/// The map's id for a trace (the kernel's `jhash2 & (n_buckets - 1)`).
pub fn id_of(stack: &[u64], n_buckets: u32) -> u32 {
    trace_hash(stack) & (n_buckets - 1)
}

/// `n` stacks of `depth` ips whose ids are pairwise distinct, so that with
/// flags 0 every one of them can be resident at once (the hit path).
pub fn distinct_id_pool(rng: &mut Rng, n: usize, depth: usize, n_buckets: u32) -> Vec<Vec<u64>> {
    assert!(
        n <= n_buckets as usize / 2,
        "pool too dense to find distinct ids"
    );
    let mut used = vec![false; n_buckets as usize];
    let mut pool = Vec::with_capacity(n);
    while pool.len() < n {
        let s = random_stack(rng, depth);
        let id = id_of(&s, n_buckets) as usize;
        if !used[id] {
            used[id] = true;
            pool.push(s);
        }
    }
    pool
}

/// `n` pairs of different stacks, both stacks of a pair in the same bucket
/// and every pair in a bucket of its own. Alternating A, B, A, ... on a pair
/// with `BPF_F_REUSE_STACKID` replaces the bucket on every call.
pub fn colliding_pairs(
    rng: &mut Rng,
    n: usize,
    depth: usize,
    n_buckets: u32,
) -> Vec<(Vec<u64>, Vec<u64>)> {
    let mut first: Vec<Option<Vec<u64>>> = vec![None; n_buckets as usize];
    let mut done = vec![false; n_buckets as usize];
    let mut pairs = Vec::with_capacity(n);
    while pairs.len() < n {
        let s = random_stack(rng, depth);
        let id = id_of(&s, n_buckets) as usize;
        if done[id] {
            continue;
        }
        match first[id].take() {
            None => first[id] = Some(s),
            Some(a) if a != s => {
                done[id] = true;
                pairs.push((a, s));
            }
            Some(a) => first[id] = Some(a),
        }
    }
    pairs
}

/// The realistic pool: `n` distinct stacks of depth uniform in `lo..=hi`.
pub fn mixed_depth_pool(rng: &mut Rng, n: usize, lo: usize, hi: usize) -> Vec<Vec<u64>> {
    (0..n)
        .map(|_| {
            let d = rng.range(lo as u64, hi as u64) as usize;
            random_stack(rng, d)
        })
        .collect()
}

/// `len` indices into `0..n`, Zipf-distributed with exponent `s` (index 0
/// the most frequent), by inverting the CDF.
pub fn zipf_sequence(rng: &mut Rng, n: usize, s: f64, len: usize) -> Vec<u32> {
    let mut cdf = Vec::with_capacity(n);
    let mut acc = 0.0;
    for k in 1..=n {
        acc += 1.0 / (k as f64).powf(s);
        cdf.push(acc);
    }
    let total = acc;
    (0..len)
        .map(|_| {
            let u = rng.unit() * total;
            cdf.partition_point(|&c| c < u).min(n - 1) as u32
        })
        .collect()
}

/// `len` indices uniform in `0..n`.
pub fn uniform_sequence(rng: &mut Rng, n: usize, len: usize) -> Vec<u32> {
    (0..len)
        .map(|_| (rng.next_u64() % n as u64) as u32)
        .collect()
}

/// The recorded call chains (`benches/data/chains.txt.gz`, made by
/// `scripts/record-chains`: `perf record -a -g` of a busy machine), one
/// per sample, in recording order.
pub fn recorded_chains() -> Vec<Vec<u64>> {
    use std::io::{BufRead, BufReader};
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/data/chains.txt.gz");
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    BufReader::new(flate2::read::GzDecoder::new(file))
        .lines()
        .map(|l| l.expect("gzip text"))
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            l.split(' ')
                .map(|x| u64::from_str_radix(x, 16).expect("hex ip"))
                .collect()
        })
        .collect()
}

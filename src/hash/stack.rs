//! The depot's stack hash: keyed, 64-bit, built for instruction-level
//! parallelism.
//!
//! The kernel-exact map must hash with `jhash2` (its ids are the kernel's),
//! whose 32-bit `mix` rounds form one serial chain: about 21 of them at
//! depth 32. The depot's ids are its own, so it uses a hash in the family
//! of wyhash / rapidhash / foldhash instead: the *folded multiply*
//! `fold(a, b) = lo(a * b) ^ hi(a * b)` (one 64 x 64 -> 128-bit multiply)
//! absorbs two frames at a time, and four independent lanes absorb eight
//! frames per step, so the multiplies of a step run in parallel:
//!
//! ```text
//! per 8 frames f0..f7:  s0 = fold(f0 ^ k4, f1 ^ s0)   s1 = fold(f2 ^ k5, f3 ^ s1)
//!                       s2 = fold(f4 ^ k6, f5 ^ s2)   s3 = fold(f6 ^ k7, f7 ^ s3)
//! tail (0..=7 frames):  pairs into s0, s1, s2; an odd last frame into s3
//! finish:               a = fold(s0 ^ k2, s1 ^ len)   b = fold(s2 ^ k3, s3 ^ k1 ^ extra)
//!                       hash = fold(a ^ k0, b ^ k5)
//! ```
//!
//! `k0..k7` are secrets expanded from the seed (splitmix64), and the lanes
//! start from `k0..k3`. Every input word is XORed with a secret before it
//! meets a multiply, so an input can only zero a multiply (and erase the
//! lane's state, the known weak spot of this construction) by guessing a
//! secret: without the seed, a profiled process can't craft stacks that
//! pile into one probe run. This is DoS resistance in the sense of
//! foldhash and rapidhash, not a cryptographic PRF.
//!
//! At depth 32 the hash is four steps of four parallel multiplies plus
//! three for the finish: a few nanoseconds, against about 100 for
//! `jhash2` (`docs/benchmarks.md`, depot section).

/// splitmix64's increment (the golden ratio in fixed point).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// One step of splitmix64: a well-mixed 64-bit value for `x`.
const fn splitmix(x: u64) -> u64 {
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The folded multiply: the XOR of the two halves of the 128-bit product.
#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let r = (a as u128).wrapping_mul(b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

/// The stack hash with its secrets expanded from a seed once.
///
/// Build one per seed and keep it (the depot does); [`stack_hash`] is the
/// one-shot form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StackHasher {
    k: [u64; 8],
}

impl StackHasher {
    /// The hasher for `seed`: eight secrets, `splitmix64(seed + i * GOLDEN)`.
    pub(crate) const fn new(seed: u64) -> Self {
        let mut k = [0u64; 8];
        let mut i = 0;
        while i < k.len() {
            k[i] = splitmix(seed.wrapping_add((i as u64 + 1).wrapping_mul(GOLDEN)));
            i += 1;
        }
        StackHasher { k }
    }

    /// The hash of `frames`.
    #[inline]
    pub(crate) fn hash(&self, frames: &[u64]) -> u64 {
        self.hash_with(frames, 0)
    }

    /// The hash of `words` with `extra` mixed into the finish: the depot
    /// passes the record kind, so equal words of different kinds hash
    /// apart.
    #[inline]
    pub(crate) fn hash_with(&self, words: &[u64], extra: u64) -> u64 {
        let [k0, k1, k2, k3, k4, k5, k6, k7] = self.k;
        let (mut s0, mut s1, mut s2, mut s3) = (k0, k1, k2, k3);
        let mut rest = words;
        while let [f0, f1, f2, f3, f4, f5, f6, f7, tail @ ..] = rest {
            s0 = fold(f0 ^ k4, f1 ^ s0);
            s1 = fold(f2 ^ k5, f3 ^ s1);
            s2 = fold(f4 ^ k6, f5 ^ s2);
            s3 = fold(f6 ^ k7, f7 ^ s3);
            rest = tail;
        }
        if let [f0, f1, tail @ ..] = rest {
            s0 = fold(f0 ^ k4, f1 ^ s0);
            rest = tail;
        }
        if let [f2, f3, tail @ ..] = rest {
            s1 = fold(f2 ^ k5, f3 ^ s1);
            rest = tail;
        }
        if let [f4, f5, tail @ ..] = rest {
            s2 = fold(f4 ^ k6, f5 ^ s2);
            rest = tail;
        }
        if let [f6] = rest {
            s3 = fold(f6 ^ k7, s3);
        }
        let len = words.len() as u64;
        let a = fold(s0 ^ k2, s1 ^ len);
        let b = fold(s2 ^ k3, s3 ^ k1 ^ extra);
        fold(a ^ k0, b ^ k5)
    }
}

/// The depot's keyed stack hash of `frames` under `seed`, in one call.
///
/// Equal to `StackHasher::new(seed).hash(frames)`; callers that hash many
/// stacks under one seed keep a [`StackHasher`] instead (the expansion of
/// the seed costs eight splitmix64 steps).
#[inline]
#[allow(dead_code)] // the map's hit cache (issue 15) is its first user
pub(crate) fn stack_hash(seed: u64, frames: &[u64]) -> u64 {
    StackHasher::new(seed).hash(frames)
}

#[cfg(all(test, feature = "std"))]
mod tests {
    extern crate std;
    use super::*;
    use std::collections::HashSet;
    use std::vec::Vec;

    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// Frozen values: the hash is part of the depot's behaviour (ids and
    /// probe runs follow it), so a change must be deliberate.
    #[test]
    fn known_values() {
        let h = StackHasher::new(0);
        assert_eq!(h.hash(&[]), stack_hash(0, &[]));
        let got = [
            h.hash(&[]),
            h.hash(&[1]),
            h.hash(&[1, 2, 3, 4, 5, 6, 7, 8, 9]),
            stack_hash(42, &[0xffff_ffff_8100_0000; 32]),
        ];
        let want = [
            0x2ff1_cb23_bc7b_bc20,
            0x6e40_c41d_2561_4ac3,
            0xdcc5_743d_543c_7eb6,
            0xcecc_b682_9136_efba,
        ];
        assert_eq!(got, want, "{got:#x?}");
    }

    #[test]
    fn seed_length_and_extra_matter() {
        let f = [0x1000u64, 0x2000, 0x3000];
        assert_ne!(stack_hash(1, &f), stack_hash(2, &f));
        assert_ne!(stack_hash(1, &f), stack_hash(1, &f[..2]));
        // Trailing zero frames change the length, so the hash.
        assert_ne!(stack_hash(1, &[0]), stack_hash(1, &[0, 0]));
        assert_ne!(stack_hash(1, &[]), stack_hash(1, &[0]));
        let h = StackHasher::new(1);
        assert_ne!(h.hash_with(&f, 0), h.hash_with(&f, 1));
        // Order matters, inside a lane and across lanes.
        assert_ne!(h.hash(&[1, 2]), h.hash(&[2, 1]));
        let a: Vec<u64> = (0..16).collect();
        let mut b = a.clone();
        b.swap(0, 8);
        assert_ne!(h.hash(&a), h.hash(&b));
    }

    /// Flipping any one input bit flips each output bit with probability
    /// close to 1/2, for every depth through two steps and every tail.
    #[test]
    fn avalanche() {
        let h = StackHasher::new(0x5eed);
        let mut x = 0x1234_5678_9abc_def1u64;
        // Miri: a token run (the hash has no unsafe code and no UB to find).
        let (depths, trials) = if cfg!(miri) { (2, 1) } else { (20, 24) };
        for depth in 1..=depths {
            let mut flips = [0u32; 64];
            let mut n = 0u32;
            for _ in 0..trials {
                let base: Vec<u64> = (0..depth).map(|_| xorshift(&mut x)).collect();
                let h0 = h.hash(&base);
                for i in 0..depth * 64 {
                    let mut m = base.clone();
                    m[i / 64] ^= 1 << (i % 64);
                    let d = h0 ^ h.hash(&m);
                    for (b, f) in flips.iter_mut().enumerate() {
                        *f += ((d >> b) & 1) as u32;
                    }
                    n += 1;
                }
            }
            for (b, &f) in flips.iter().enumerate() {
                let p = f as f64 / n as f64;
                // n >= 1,536 samples: 5 sigma of a fair coin is < 0.07.
                let tol = if cfg!(miri) { 0.4 } else { 0.07 };
                assert!((p - 0.5).abs() < tol, "depth {depth} bit {b}: {p}");
            }
        }
    }

    /// Structured inputs (small counters, one differing frame) give
    /// distinct hashes, and their low bits (the probe position) spread.
    #[test]
    fn structured_inputs_spread() {
        let h = StackHasher::new(7);
        let n = if cfg!(miri) { 200 } else { 100_000 };
        let mut seen = HashSet::new();
        // Miri runs few inputs: fewer buckets keep the check meaningful.
        let nb = if cfg!(miri) { 4 } else { 64 };
        let mut buckets = std::vec![0u32; nb];
        for i in 0..n as u64 {
            let frames = [0xffff_ffff_8100_0000, i, 0xffff_ffff_8100_0040];
            let v = h.hash(&frames);
            assert!(seen.insert(v), "collision at {i}");
            buckets[(v % nb as u64) as usize] += 1;
        }
        let mean = n as f64 / nb as f64;
        for (b, &c) in buckets.iter().enumerate() {
            let tol = if cfg!(miri) { 0.5 } else { 0.1 };
            assert!(
                (c as f64 - mean).abs() < tol * mean,
                "bucket {b}: {c} vs {mean}"
            );
        }
    }
}

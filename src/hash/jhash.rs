//! Bob Jenkins' lookup3 hash as the kernel has it (`include/linux/jhash.h`):
//! `jhash2` over 32-bit words, and the stack id hash built on it.
//!
//! The map's id of a trace is `trace_hash(ips) & (n_buckets - 1)`, where
//! `trace_hash` hashes each 64-bit ip as two 32-bit words, low word first,
//! which is how the kernel's `jhash2((u32 *)ips, nr * 2, 0)` reads a
//! little-endian `u64` array. The words are produced on the fly, so hashing
//! never allocates and does not depend on the host's byte order.

/// The kernel's `JHASH_INITVAL`.
pub(crate) const JHASH_INITVAL: u32 = 0xdead_beef;

#[inline(always)]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

#[inline(always)]
fn finalize(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// The kernel's `JHASH_INITVAL + (length << 2) + initval` for `length`
/// words (`length` a `u32` as in the kernel, so the shift wraps the same).
#[inline(always)]
fn seed(length: u32, initval: u32) -> [u32; 3] {
    let init = JHASH_INITVAL
        .wrapping_add(length.wrapping_shl(2))
        .wrapping_add(initval);
    [init; 3]
}

/// Adds three words to the state, as the kernel's `a += k[0]; b += k[1];
/// c += k[2]` (missing words are 0: the kernel's switch adds only the ones
/// there are).
#[inline(always)]
fn add(s: &mut [u32; 3], k0: u32, k1: u32, k2: u32) {
    s[0] = s[0].wrapping_add(k0);
    s[1] = s[1].wrapping_add(k1);
    s[2] = s[2].wrapping_add(k2);
}

/// The body of `jhash2` from state `s` over the words `k` that are left:
/// a mix per three words while more than three remain, then the last
/// 1..=3 words and `finalize` (nothing for none).
#[inline(always)]
fn finish(mut s: [u32; 3], mut k: &[u32]) -> u32 {
    while let [k0, k1, k2, rest @ ..] = k {
        if rest.is_empty() {
            break;
        }
        add(&mut s, *k0, *k1, *k2);
        let [a, b, c] = &mut s;
        mix(a, b, c);
        k = rest;
    }
    match *k {
        [] => return s[2],
        [k0] => add(&mut s, k0, 0, 0),
        [k0, k1] => add(&mut s, k0, k1, 0),
        [k0, k1, k2, ..] => add(&mut s, k0, k1, k2),
    }
    let [a, b, c] = &mut s;
    finalize(a, b, c);
    s[2]
}

/// The kernel's `jhash2(k, length, initval)` with `length = words.len()`.
#[inline]
pub fn jhash2(words: &[u32], initval: u32) -> u32 {
    finish(seed(words.len() as u32, initval), words)
}

/// The hash of a trace as the stack map computes it:
/// `jhash2((u32 *)ips, 2 * ips.len(), 0)` on a little-endian machine.
///
/// Walks three ips (six words, two mix rounds) a step while more than three
/// are left, then hands the last 1..=3 ips (2..=6 words) to `jhash2`'s own
/// tail: no allocation, no per-word iterator (which cost twice the
/// instructions in the benchmark profile).
#[inline]
pub fn trace_hash(ips: &[u64]) -> u32 {
    let w = |ip: u64| (ip as u32, (ip >> 32) as u32);
    let mut s = seed((ips.len() as u32).wrapping_mul(2), 0);
    let mut rest = ips;
    while let [x, y, z, tail @ ..] = rest {
        if tail.is_empty() {
            break;
        }
        let ((x0, x1), (y0, y1), (z0, z1)) = (w(*x), w(*y), w(*z));
        add(&mut s, x0, x1, y0);
        let [a, b, c] = &mut s;
        mix(a, b, c);
        add(&mut s, y1, z0, z1);
        let [a, b, c] = &mut s;
        mix(a, b, c);
        rest = tail;
    }
    let mut words = [0u32; 6];
    for (pair, &ip) in words.chunks_exact_mut(2).zip(rest) {
        (pair[0], pair[1]) = w(ip);
    }
    finish(s, words.get(..rest.len() * 2).unwrap_or(&[]))
}

#[cfg(all(test, feature = "std"))]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn hex(s: &str) -> u32 {
        u32::from_str_radix(s, 16).unwrap()
    }

    /// Every vector in `shared/vectors/jhash2.tsv`, read off the kernel's
    /// `jhash2`.
    #[test]
    fn kernel_vectors() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors/jhash2.tsv");
        let text =
            std::fs::read_to_string(path).expect("shared/vectors/jhash2.tsv beside the repo");
        let mut n = 0;
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let cols: Vec<&str> = line.split('\t').collect();
            assert_eq!(cols.len(), 3, "bad line {line:?}");
            let words: Vec<u32> = cols[0].split_whitespace().map(hex).collect();
            let (init, want) = (hex(cols[1]), hex(cols[2]));
            assert_eq!(
                jhash2(&words, init),
                want,
                "words {:?} init {init:#x}",
                cols[0]
            );
            if init == 0 && words.len() % 2 == 0 {
                let ips: Vec<u64> = words
                    .chunks(2)
                    .map(|w| w[0] as u64 | (w[1] as u64) << 32)
                    .collect();
                assert_eq!(trace_hash(&ips), want);
            }
            n += 1;
        }
        assert_eq!(n, 132, "vector count");
    }

    /// The three-ips-a-step `trace_hash` equals `jhash2` over the words,
    /// for every depth through several steps and tails.
    #[test]
    fn trace_hash_equals_jhash2_of_the_words() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for depth in 0..if cfg!(miri) { 14 } else { 200 } {
            let ips: Vec<u64> = (0..depth)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                })
                .collect();
            let words: Vec<u32> = ips
                .iter()
                .flat_map(|&ip| [ip as u32, (ip >> 32) as u32])
                .collect();
            assert_eq!(trace_hash(&ips), jhash2(&words, 0), "depth {depth}");
        }
    }

    #[test]
    fn trace_hash_is_low_word_first() {
        let ips = [0x1111_2222_3333_4444u64, 5];
        assert_eq!(
            trace_hash(&ips),
            jhash2(&[0x3333_4444, 0x1111_2222, 5, 0], 0)
        );
    }
}

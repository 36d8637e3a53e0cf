//! Bob Jenkins' lookup3 hash as the kernel has it (`include/linux/jhash.h`):
//! `jhash2` over 32-bit words, and the stack id hash built on it.
//!
//! The map's id of a trace is `trace_hash(ips) & (n_buckets - 1)`, where
//! `trace_hash` hashes each 64-bit ip as two 32-bit words, low word first,
//! which is how the kernel's `jhash2((u32 *)ips, nr * 2, 0)` reads a
//! little-endian `u64` array. The words are produced on the fly, so hashing
//! never allocates and does not depend on the host's byte order.

/// The kernel's `JHASH_INITVAL`.
pub const JHASH_INITVAL: u32 = 0xdead_beef;

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

/// `jhash2` over `length` words taken from `words` (missing words read as 0,
/// which only happens if the caller's `length` is wrong; it never panics).
///
/// `length` is a `u32` as in the kernel: `length << 2` wraps the same way.
#[inline]
pub fn jhash2_iter<I: Iterator<Item = u32>>(mut words: I, length: u32, initval: u32) -> u32 {
    let init = JHASH_INITVAL
        .wrapping_add(length.wrapping_shl(2))
        .wrapping_add(initval);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut left = length;
    let mut next = || words.next().unwrap_or(0);
    while left > 3 {
        a = a.wrapping_add(next());
        b = b.wrapping_add(next());
        c = c.wrapping_add(next());
        mix(&mut a, &mut b, &mut c);
        left -= 3;
    }
    if left == 0 {
        return c;
    }
    // The kernel's switch falls through 3 -> 2 -> 1, adding k[2], k[1],
    // k[0]; reading them in order gives the same sums.
    a = a.wrapping_add(next());
    if left >= 2 {
        b = b.wrapping_add(next());
    }
    if left == 3 {
        c = c.wrapping_add(next());
    }
    finalize(&mut a, &mut b, &mut c);
    c
}

/// The kernel's `jhash2(k, length, initval)` with `length = words.len()`.
#[inline]
pub fn jhash2(words: &[u32], initval: u32) -> u32 {
    jhash2_iter(words.iter().copied(), words.len() as u32, initval)
}

/// The hash of a trace as the stack map computes it:
/// `jhash2((u32 *)ips, 2 * ips.len(), 0)` on a little-endian machine.
#[inline]
pub fn trace_hash(ips: &[u64]) -> u32 {
    // Three ips are six words: two `mix` rounds per step. The kernel mixes
    // only while more than three words are left, so the last 1..=3 ips go
    // to the tail below (at most one more mix, then `finalize`).
    let len = (ips.len() as u32).wrapping_mul(2);
    let init = JHASH_INITVAL.wrapping_add(len.wrapping_shl(2));
    let (mut a, mut b, mut c) = (init, init, init);
    let w = |ip: u64| (ip as u32, (ip >> 32) as u32);
    let mut rest = ips;
    while let [x, y, z, tail @ ..] = rest {
        if tail.is_empty() {
            break;
        }
        let ((x0, x1), (y0, y1), (z0, z1)) = (w(*x), w(*y), w(*z));
        a = a.wrapping_add(x0);
        b = b.wrapping_add(x1);
        c = c.wrapping_add(y0);
        mix(&mut a, &mut b, &mut c);
        a = a.wrapping_add(y1);
        b = b.wrapping_add(z0);
        c = c.wrapping_add(z1);
        mix(&mut a, &mut b, &mut c);
        rest = tail;
    }
    match rest {
        [] => return c,
        [x] => {
            let (x0, x1) = w(*x);
            a = a.wrapping_add(x0);
            b = b.wrapping_add(x1);
        }
        [x, y] => {
            let ((x0, x1), (y0, y1)) = (w(*x), w(*y));
            a = a.wrapping_add(x0);
            b = b.wrapping_add(x1);
            c = c.wrapping_add(y0);
            mix(&mut a, &mut b, &mut c);
            a = a.wrapping_add(y1);
        }
        [x, y, z, ..] => {
            let ((x0, x1), (y0, y1), (z0, z1)) = (w(*x), w(*y), w(*z));
            a = a.wrapping_add(x0);
            b = b.wrapping_add(x1);
            c = c.wrapping_add(y0);
            mix(&mut a, &mut b, &mut c);
            a = a.wrapping_add(y1);
            b = b.wrapping_add(z0);
            c = c.wrapping_add(z1);
        }
    }
    finalize(&mut a, &mut b, &mut c);
    c
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

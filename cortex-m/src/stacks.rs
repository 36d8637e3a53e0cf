//! The stacks the tests insert, and a small deterministic generator.
//!
//! Stack number `k` is `frames(k)`: 1 to [`MAX_FRAMES`] frames, the first
//! carrying a magic tag and `k`, the others derived from `k`. So any stack a
//! lookup returns can be checked to be *exactly* one the test inserted
//! ([`number_of`]) with no table of what was inserted.

/// Most frames of a generated stack.
pub const MAX_FRAMES: usize = 8;

/// High bits of every generated stack's first frame.
const MAGIC: u64 = 0x5eed_0000_0000_0000;

/// A generated stack: its frames and how many are used.
#[derive(Clone, Copy)]
pub struct Stack {
    buf: [u64; MAX_FRAMES],
    len: usize,
}

impl Stack {
    /// The frames.
    pub fn ips(&self) -> &[u64] {
        self.buf.get(..self.len).unwrap_or(&self.buf)
    }
}

/// splitmix64's finaliser: frame `i` of stack `k`.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Stack number `k`: `1 + k % MAX_FRAMES` frames.
pub fn frames(k: u32) -> Stack {
    let len = 1 + (k as usize % MAX_FRAMES);
    let mut buf = [0u64; MAX_FRAMES];
    for (i, f) in buf.iter_mut().enumerate().take(len) {
        *f = if i == 0 {
            MAGIC | u64::from(k)
        } else {
            mix(u64::from(k) << 8 | i as u64)
        };
    }
    Stack { buf, len }
}

/// `Some(k)` when `ips` is exactly `frames(k)`, else `None`.
pub fn number_of(ips: &[u64]) -> Option<u32> {
    let first = *ips.first()?;
    if first & !0xffff_ffff != MAGIC {
        return None;
    }
    let k = first as u32;
    (frames(k).ips() == ips).then_some(k)
}

/// xorshift32: deterministic, no dependency, fine for picking test moves.
pub struct Rng(u32);

impl Rng {
    /// A generator from a non-zero seed.
    pub const fn new(seed: u32) -> Self {
        Rng(if seed == 0 { 0x9e37_79b9 } else { seed })
    }

    /// The next 32 random bits.
    pub fn next(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u32) -> u32 {
        self.next() % n.max(1)
    }
}

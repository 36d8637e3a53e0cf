//! What the kernel differential tests share besides the kernel plumbing:
//! the environment knobs (`KDIFF_SEED`, `KDIFF_CASES`), loud lines that
//! libtest does not capture, renderings for mismatch reports, and the
//! random choice of a call path's frames.

use super::{Dump, Errno, Rng};

/// Prints `KERNEL DIFF SKIPPED: <why>` and returns true when BPF is not
/// available here (no CAP_BPF, BPF disabled).
pub fn skipped() -> bool {
    match super::unavailable() {
        Some(why) => {
            loud(&format!("KERNEL DIFF SKIPPED: {why}"));
            true
        }
        None => false,
    }
}

/// Writes a line to the real stderr: libtest captures `println!` and
/// `eprintln!` of passing tests, not writes to the stream itself.
pub fn loud(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// `KDIFF_SEED`: run that one case.
pub fn env_seed() -> Option<u64> {
    let s = std::env::var("KDIFF_SEED").ok()?;
    Some(
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("KDIFF_SEED={s}: not a u64")),
    )
}

/// `KDIFF_CASES`: how many cases (`default` without it).
pub fn env_cases(default: u64) -> u64 {
    std::env::var("KDIFF_CASES")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// `EINVAL`, `EFAULT`, ... (or `errno N`).
pub fn errno_name(e: Errno) -> String {
    match kstackmap::Error::from_errno(e) {
        Some(err) => err.name().to_string(),
        None => format!("errno {e}"),
    }
}

/// `Ok(value)` or the errno's name.
pub fn show<T: Shown>(r: &Result<T, Errno>) -> String {
    match r {
        Ok(v) => format!("Ok({})", v.shown()),
        Err(e) => errno_name(*e),
    }
}

/// Short renderings for mismatch reports.
pub trait Shown {
    fn shown(&self) -> String;
}

impl Shown for u32 {
    fn shown(&self) -> String {
        self.to_string()
    }
}

impl Shown for usize {
    fn shown(&self) -> String {
        self.to_string()
    }
}

impl Shown for () {
    fn shown(&self) -> String {
        String::new()
    }
}

impl Shown for Vec<u8> {
    /// The value as native-endian u64 words, the zero tail left out.
    fn shown(&self) -> String {
        let words: Vec<u64> = self
            .chunks(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w[..c.len()].copy_from_slice(c);
                u64::from_ne_bytes(w)
            })
            .collect();
        let end = words.iter().rposition(|&w| w != 0).map_or(0, |i| i + 1);
        format!(
            "{} bytes, words {:x?} + {} zero words",
            self.len(),
            &words[..end],
            words.len() - end
        )
    }
}

/// One caller of a path (see `kernel::call_path`): mostly the three Rust
/// functions, now and then a stub in a mapping without a build id or a
/// fake frame with an odd return address.
pub fn path_byte(rng: &mut Rng) -> u8 {
    if !super::HAS_STUBS {
        return rng.range(0, 3) as u8;
    }
    match rng.range(0, 40) {
        0..=3 => rng.range(3, 5) as u8,
        4 => 5 + rng.range(0, super::fake_ips().len() as u64) as u8,
        _ => rng.range(0, 3) as u8,
    }
}

/// Freelist shards for our map: the CPUs this machine has.
pub fn nr_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The CPU this thread runs on now.
pub fn current_cpu() -> usize {
    // SAFETY: sched_getcpu has no preconditions.
    let c = unsafe { libc::sched_getcpu() };
    usize::try_from(c).unwrap_or(0)
}

/// The first entry where two dumps differ, rendered.
pub fn first_value_diff(k: &Dump, o: &Dump, frame: usize) -> String {
    for ((kid, kv), (oid, ov)) in k.0.iter().zip(&o.0) {
        if kid != oid || kv != ov {
            return format!(
                "\n  first difference at id {kid}/{oid}: kernel {}\n  ours {}",
                show(kv),
                show_value(ov, kv, frame)
            );
        }
    }
    String::new()
}

/// `ours` rendered, with where it first differs from `kernel`'s bytes.
pub fn show_value(
    ours: &Result<Vec<u8>, Errno>,
    kernel: &Result<Vec<u8>, Errno>,
    frame: usize,
) -> String {
    match (ours, kernel) {
        (Ok(o), Ok(k)) => format!("{}{}", show(ours), where_differs(k, o, frame)),
        _ => show(ours),
    }
}

/// Where two buffers first differ: the byte offset, the frame, and that
/// frame's bytes on both sides.
pub fn where_differs(kernel: &[u8], ours: &[u8], frame: usize) -> String {
    let Some(at) = kernel.iter().zip(ours).position(|(a, b)| a != b) else {
        return String::new();
    };
    let f = at / frame;
    let bytes = |b: &[u8]| {
        b.get(f * frame..(f + 1) * frame)
            .map(|x| format!("{x:02x?}"))
    };
    format!(
        "\n  first difference at byte {at} (frame {f}): kernel {} ours {}",
        bytes(kernel).unwrap_or_default(),
        bytes(ours).unwrap_or_default()
    )
}

/// The cases' seeds: `KDIFF_SEED` alone, or `KDIFF_CASES` (`default`)
/// seeds from `base`.
pub fn seeds(base: u64, default: u64) -> Vec<u64> {
    match env_seed() {
        Some(s) => vec![s],
        None => (0..env_cases(default)).map(|i| base + i).collect(),
    }
}

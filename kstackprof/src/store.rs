//! Where stacks are kept while recording.
//!
//! - `Depot` (the default): one `kstackmap::StackDepot` for the kernel and
//!   the user parts of every sample. It keeps every distinct stack until it
//!   is full (no hash-bucket collisions), at its exact length; the marker
//!   words are taken out before a part is stored. Sized from the sampling
//!   rate, the duration and the CPU count (see [`DepotSize`]).
//! - `Maps` (`--kernel-map`) is BCC's `profile` layout: two kernel-exact
//!   `StackMap`s, one for the kernel part and one for the user part, fed
//!   the perf callchain through `get_stackid_pe` (the marker words are
//!   stored with the frames, as the kernel stores them, and stripped when
//!   read back). A second stack that hashes to a taken bucket is dropped.

use anyhow::{anyhow, Result};
use kstackmap::uapi::{
    BPF_F_STACK_BUILD_ID, BPF_F_USER_BUILD_ID, BPF_F_USER_STACK, PERF_CONTEXT_USER,
    PERF_MAX_STACK_DEPTH,
};
use kstackmap::{
    Config, DepotConfig, Error as MapError, MapAttr, ProcMaps, StackBuildId, StackDepot, StackMap,
};
use zerocopy::IntoBytes;

/// Words per stored stack in a map (`value_size / 8`).
pub const STACK_WORDS: u32 = PERF_MAX_STACK_DEPTH;

/// Perf callchain context markers are the top 4095 values
/// (`PERF_CONTEXT_MAX` = -4095): `PERF_CONTEXT_KERNEL`, `_USER`, ...
pub fn is_marker(w: u64) -> bool {
    w >= (-4095i64) as u64
}

/// How big a depot to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DepotSize {
    /// Most distinct stacks (kernel and user parts count apart).
    pub capacity: u32,
    /// Arena, in 8-byte words: a header word and a word a frame (four for
    /// a build-id frame) per stack.
    pub arena_words: usize,
}

/// When no `-d` is given (a command runs until it ends), a depot is sized
/// for this long.
pub const DEFAULT_SECONDS: f64 = 60.0;

impl DepotSize {
    /// Room for every sample of a recording to bring two new stacks (its
    /// kernel and user parts): `2 x freq x seconds x cpus`, at least 65,536
    /// and at most 2^22 stacks, with 16 words a stack (40 with build ids;
    /// a real profile's mean depth is about 9). The arena is allocated but
    /// not touched up front: its pages cost memory only once used.
    pub fn for_recording(
        freq: u64,
        seconds: Option<f64>,
        cpus: usize,
        build_id: bool,
    ) -> DepotSize {
        let secs = seconds.unwrap_or(DEFAULT_SECONDS).max(1.0);
        let parts = 2.0 * freq as f64 * secs * cpus.max(1) as f64;
        let capacity = (parts.min(f64::from(1u32 << 22)) as u32).clamp(1 << 16, 1 << 22);
        let per_stack = if build_id { 40 } else { 16 };
        DepotSize {
            capacity,
            arena_words: capacity as usize * per_stack,
        }
    }
}

/// The stack store of a recording.
pub enum Store {
    /// One depot for both parts.
    Depot {
        depot: Box<StackDepot>,
        size: DepotSize,
        /// User stacks are kept as `StackBuildId` frames.
        build_id: bool,
    },
    /// Two kernel-exact maps (kernel part, user part).
    Maps {
        kernel: Box<StackMap>,
        user: Box<StackMap>,
        entries: u32,
        /// The user map holds `StackBuildId` frames.
        build_id: bool,
    },
}

fn new_map(entries: u32, nr_cpus: usize, build_id: bool) -> Result<StackMap> {
    let (frame, map_flags) = if build_id {
        (
            std::mem::size_of::<StackBuildId>() as u32,
            BPF_F_STACK_BUILD_ID,
        )
    } else {
        (8, 0)
    };
    let attr = MapAttr {
        max_entries: entries,
        key_size: 4,
        value_size: STACK_WORDS * frame,
        map_flags,
        numa_node: 0,
    };
    let cfg = Config {
        nr_cpus,
        max_stack: PERF_MAX_STACK_DEPTH,
    };
    StackMap::with_config(&attr, cfg)
        .map_err(|e| anyhow!("cannot create a stack map of {entries} entries: {e}"))
}

/// The frames of one part of a perf callchain, innermost first, marker
/// words left out: the kernel part ends at the first `PERF_CONTEXT_USER`,
/// the user part follows it. At most [`STACK_WORDS`] frames (perf's own
/// bound is the same); returns how many were written into `out`.
fn part_frames(chain: &[u64], user: bool, out: &mut [u64; STACK_WORDS as usize]) -> usize {
    let split = chain
        .iter()
        .position(|&w| w == PERF_CONTEXT_USER)
        .unwrap_or(chain.len());
    let words = if user {
        chain.get(split..).unwrap_or(&[])
    } else {
        chain.get(..split).unwrap_or(chain)
    };
    let mut n = 0;
    for (slot, &w) in out.iter_mut().zip(words.iter().filter(|&&w| !is_marker(w))) {
        *slot = w;
        n += 1;
    }
    n
}

impl Store {
    /// A depot of `size`.
    ///
    /// # Errors
    /// The size is beyond what a depot takes, or the memory is not there.
    pub fn depot(size: DepotSize, nr_cpus: usize, build_id: bool) -> Result<Store> {
        let cfg = DepotConfig {
            capacity: size.capacity,
            arena_words: size.arena_words,
            nr_cpus,
            seed: seed(),
        };
        let depot = StackDepot::new(&cfg).map_err(|e| {
            anyhow!(
                "cannot create a stack depot of {} stacks and {} MiB: {e}",
                size.capacity,
                (size.arena_words * 8) >> 20
            )
        })?;
        Ok(Store::Depot {
            depot: Box::new(depot),
            size,
            build_id,
        })
    }

    /// Two maps of `entries` entries each.
    ///
    /// # Errors
    /// The map could not be created (size).
    pub fn maps(entries: u32, nr_cpus: usize, build_id: bool) -> Result<Store> {
        Ok(Store::Maps {
            kernel: Box::new(new_map(entries, nr_cpus, false)?),
            user: Box::new(new_map(entries, nr_cpus, build_id)?),
            entries,
            build_id,
        })
    }

    /// Whether user stacks are kept as `StackBuildId` frames.
    pub fn build_id(&self) -> bool {
        match self {
            Store::Depot { build_id, .. } | Store::Maps { build_id, .. } => *build_id,
        }
    }

    /// What the store is, for the summary.
    pub fn describe(&self) -> String {
        match self {
            Store::Depot { depot, size, .. } => {
                let st = depot.stats();
                format!(
                    "a stack depot: {} stacks of {} ({:.1}%), {} of {} arena words ({:.1}%), \
                     {} KiB in use of {} KiB",
                    st.stacks,
                    size.capacity,
                    100.0 * st.stacks as f64 / f64::from(size.capacity),
                    st.words_used,
                    size.arena_words,
                    100.0 * st.words_used as f64 / size.arena_words.max(1) as f64,
                    (depot.mem_usage() - (size.arena_words - st.words_used) * 8) / 1024,
                    depot.mem_usage() / 1024
                )
            }
            Store::Maps {
                kernel,
                user,
                entries,
                ..
            } => format!(
                "two kernel-exact stack maps of {entries} entries, {} KiB",
                (kernel.mem_usage() + user.mem_usage()) / 1024
            ),
        }
    }

    /// Stores the kernel part (`user == false`) or the user part of a perf
    /// callchain (given with its marker words); user frames go through
    /// `resolver` when the store keeps build ids (the kernel's
    /// `bpf_get_stack` rules: `StackBuildId` with a file offset, or the ip
    /// where no file with a build id is mapped).
    ///
    /// # Errors
    /// `Fault` (no such part), or why the stack could not be kept.
    pub fn intern(
        &self,
        cpu: usize,
        chain: &[u64],
        user: bool,
        resolver: Option<&ProcMaps>,
    ) -> Result<u32, MapError> {
        match self {
            Store::Depot {
                depot, build_id, ..
            } => {
                let mut ips = [0u64; STACK_WORDS as usize];
                let n = part_frames(chain, user, &mut ips);
                let ips = &ips[..n];
                if ips.is_empty() {
                    return Err(MapError::Fault);
                }
                if user && *build_id {
                    let mut frames = [StackBuildId::default(); STACK_WORDS as usize];
                    let flags = BPF_F_USER_STACK | BPF_F_USER_BUILD_ID;
                    let r = resolver.map(|r| r as &dyn kstackmap::VmaResolver);
                    let bytes = kstackmap::get_stack(ips, flags, frames.as_mut_bytes(), r)?;
                    let n = bytes / std::mem::size_of::<StackBuildId>();
                    depot.intern_build_ids(cpu, &frames[..n])
                } else {
                    depot.intern(cpu, ips)
                }
            }
            Store::Maps {
                kernel, user: umap, ..
            } => match (user, resolver) {
                (false, _) => kernel.get_stackid_pe(cpu, chain, 0),
                (true, Some(r)) => umap.get_stackid_pe_resolved(cpu, chain, BPF_F_USER_STACK, r),
                (true, None) => umap.get_stackid_pe(cpu, chain, BPF_F_USER_STACK),
            },
        }
    }

    /// A stored stack of ips, innermost first, markers removed.
    pub fn ips(&self, user: bool, id: u32) -> Option<Vec<u64>> {
        match self {
            Store::Depot { depot, .. } => depot.get(id).map(<[u64]>::to_vec),
            Store::Maps {
                kernel, user: umap, ..
            } => {
                let map = if user { umap } else { kernel };
                let mut buf = vec![0u64; STACK_WORDS as usize];
                let ips = map.lookup_ips(id, &mut buf).ok()?;
                Some(ips.iter().copied().filter(|&w| !is_marker(w)).collect())
            }
        }
    }

    /// A stored user stack of build-id frames, innermost first, marker
    /// frames removed.
    pub fn build_ids(&self, id: u32) -> Option<Vec<StackBuildId>> {
        match self {
            Store::Depot { depot, .. } => depot.get_build_ids(id).map(<[StackBuildId]>::to_vec),
            Store::Maps { user, .. } => {
                let mut buf = vec![StackBuildId::default(); STACK_WORDS as usize];
                let frames = user.lookup_build_ids(id, &mut buf).ok()?;
                Some(
                    frames
                        .iter()
                        .filter(|f| !f.ip().is_some_and(is_marker))
                        .copied()
                        .collect(),
                )
            }
        }
    }
}

/// A seed for the depot's hash that a profiled program cannot guess, so it
/// cannot craft stacks that pile into one probe run: the kernel's random
/// bytes, or the clock if those cannot be read.
fn seed() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: b is a valid buffer of 8 bytes; getrandom writes at most that.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 8 {
        u64::from_ne_bytes(b)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x6b73_746b, |d| d.as_nanos() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kstackmap::uapi::{PERF_CONTEXT_KERNEL, PERF_CONTEXT_USER};

    #[test]
    fn markers() {
        assert!(is_marker(PERF_CONTEXT_KERNEL));
        assert!(is_marker(PERF_CONTEXT_USER));
        assert!(!is_marker(0xffff_ffff_8100_0000));
        assert!(!is_marker(0x7fff_0000_0000));
    }

    #[test]
    fn depot_keeps_both_parts_without_markers() {
        let size = DepotSize {
            capacity: 16,
            arena_words: 256,
        };
        let s = Store::depot(size, 1, false).unwrap();
        let chain = [
            PERF_CONTEXT_KERNEL,
            0xffff_ffff_8100_0010,
            0xffff_ffff_8100_0020,
            PERF_CONTEXT_USER,
            0x40_1000,
            0x40_2000,
        ];
        let k = s.intern(0, &chain, false, None).unwrap();
        let u = s.intern(0, &chain, true, None).unwrap();
        assert_ne!(k, u);
        assert_eq!(
            s.ips(false, k).unwrap(),
            [0xffff_ffff_8100_0010, 0xffff_ffff_8100_0020]
        );
        assert_eq!(s.ips(true, u).unwrap(), [0x40_1000, 0x40_2000]);
        assert_eq!(
            s.intern(0, &chain, true, None),
            Ok(u),
            "same stack, same id"
        );
        let user_only = [PERF_CONTEXT_USER, 0x40_1000];
        assert_eq!(s.intern(0, &user_only, false, None), Err(MapError::Fault));
        assert_eq!(
            s.intern(0, &[PERF_CONTEXT_KERNEL, 1], true, None),
            Err(MapError::Fault)
        );
        // Full: NoMem, and what is in stays found.
        for i in 0..20u64 {
            let _ = s.intern(0, &[PERF_CONTEXT_USER, 0x50_0000 + i], true, None);
        }
        assert_eq!(
            s.intern(0, &[PERF_CONTEXT_USER, 0x60_0000], true, None),
            Err(MapError::NoMem)
        );
        assert_eq!(s.intern(0, &chain, true, None), Ok(u));
    }

    #[test]
    fn depot_build_id_frames() {
        let size = DepotSize {
            capacity: 16,
            arena_words: 256,
        };
        let s = Store::depot(size, 1, true).unwrap();
        let me = ProcMaps::for_pid(std::process::id()).unwrap();
        let ip = depot_build_id_frames as *const () as u64;
        let u = s
            .intern(0, &[PERF_CONTEXT_USER, ip, 0x10], true, Some(&me))
            .unwrap();
        let frames = s.build_ids(u).unwrap();
        assert_eq!(frames.len(), 2);
        // Our own code: a file offset and a build id when the test binary
        // has one, else the ip. (0x10 gets whatever the kernel's rule gives:
        // the first mapping that ends above it, even if it starts above.)
        let vma = kstackmap::VmaResolver::find_vma(&me, ip).unwrap();
        match vma.build_id {
            Some(id) => {
                assert_eq!(frames[0].build_id, id);
                assert_eq!(
                    frames[0].offset(),
                    Some(vma.file_offset.wrapping_add(ip - vma.start))
                );
            }
            None => assert_eq!(frames[0].ip(), Some(ip)),
        }
    }

    #[test]
    fn sizes_follow_rate_duration_and_cpus() {
        let s = DepotSize::for_recording(999, Some(5.0), 2, false);
        assert_eq!(s.capacity, 1 << 16, "2 x 999 x 5 x 2 = 19,980: the minimum");
        let s = DepotSize::for_recording(999, Some(60.0), 16, false);
        assert_eq!(s.capacity, 1_918_080);
        assert_eq!(s.arena_words, 1_918_080 * 16);
        let s = DepotSize::for_recording(99_999, Some(3600.0), 256, true);
        assert_eq!(s.capacity, 1 << 22, "the maximum");
        assert_eq!(s.arena_words, (1 << 22) * 40);
    }

    #[test]
    fn maps_keep_both_parts() {
        let s = Store::maps(64, 1, false).unwrap();
        let chain = [
            PERF_CONTEXT_KERNEL,
            0xffff_ffff_8100_0010,
            0xffff_ffff_8100_0020,
            PERF_CONTEXT_USER,
            0x40_1000,
            0x40_2000,
        ];
        let k = s.intern(0, &chain, false, None).unwrap();
        let u = s.intern(0, &chain, true, None).unwrap();
        assert_eq!(
            s.ips(false, k).unwrap(),
            [0xffff_ffff_8100_0010, 0xffff_ffff_8100_0020]
        );
        assert_eq!(s.ips(true, u).unwrap(), [0x40_1000, 0x40_2000]);
        // A user-mode sample has no kernel part.
        let user_only = [PERF_CONTEXT_USER, 0x40_1000];
        assert_eq!(s.intern(0, &user_only, false, None), Err(MapError::Fault));
    }
}

//! Where stacks are kept while recording.
//!
//! `Maps` is BCC's `profile` layout: two kernel-exact `StackMap`s, one for
//! the kernel part of each sample and one for the user part, fed the perf
//! callchain through `get_stackid_pe` (the marker words are stored with the
//! frames, as the kernel stores them, and stripped when read back).

use anyhow::{anyhow, Result};
use kstackmap::uapi::{BPF_F_STACK_BUILD_ID, BPF_F_USER_STACK, PERF_MAX_STACK_DEPTH};
use kstackmap::{Config, Error as MapError, MapAttr, ProcMaps, StackBuildId, StackMap};

/// Words per stored stack in a map (`value_size / 8`).
pub const STACK_WORDS: u32 = PERF_MAX_STACK_DEPTH;

/// Perf callchain context markers are the top 4095 values
/// (`PERF_CONTEXT_MAX` = -4095): `PERF_CONTEXT_KERNEL`, `_USER`, ...
pub fn is_marker(w: u64) -> bool {
    w >= (-4095i64) as u64
}

/// The stack store of a recording.
pub enum Store {
    /// Two kernel-exact maps (kernel part, user part).
    Maps {
        kernel: StackMap,
        user: StackMap,
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

impl Store {
    /// Two maps of `entries` entries each.
    ///
    /// # Errors
    /// The map could not be created (size).
    pub fn maps(entries: u32, nr_cpus: usize, build_id: bool) -> Result<Store> {
        Ok(Store::Maps {
            kernel: new_map(entries, nr_cpus, false)?,
            user: new_map(entries, nr_cpus, build_id)?,
            entries,
            build_id,
        })
    }

    /// Whether user stacks are kept as `StackBuildId` frames.
    pub fn build_id(&self) -> bool {
        match self {
            Store::Maps { build_id, .. } => *build_id,
        }
    }

    /// What the store is, for the summary.
    pub fn describe(&self) -> String {
        match self {
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
    /// callchain (with its marker words); user frames go through
    /// `resolver` when the store keeps build ids. `Fault`: the sample has
    /// no such part.
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

//! Build ids for build-id maps: the [`VmaResolver`] trait through which the
//! map turns an instruction address into `(build id, file offset)`.
//!
//! The map walks a trace as the kernel's `stack_map_get_build_id_offset`
//! does (non-sleepable path): per ip it asks for the mapping `find_vma`
//! would give — the first one whose end is above the ip, which need not
//! contain it — and computes `offset = file_offset + ip - start`
//! (wrapping). An ip that falls in the previous resolved mapping
//! (`start <= ip <= end`, the kernel's `range_in_vma`) reuses its build id
//! without a lookup. No mapping, an anonymous one, or one with no build id
//! gives status IP with the ip and a zeroed build id.

mod elf_note;
#[cfg(feature = "std")]
mod proc_maps;

pub use elf_note::{parse_build_id, parse_build_id_from, parse_note_buf, BuildIdNote, ElfSource};
#[cfg(feature = "std")]
pub use proc_maps::{Mapping, Perms, ProcMaps};

use crate::uapi::{StackBuildId, BUILD_ID_SIZE_MAX};

/// A build id, zero-padded to [`BUILD_ID_SIZE_MAX`] bytes as the kernel
/// stores it.
pub type BuildId = [u8; BUILD_ID_SIZE_MAX];

/// One memory mapping, as `find_vma` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Vma {
    /// First address of the mapping (`vm_start`).
    pub start: u64,
    /// One past the last address (`vm_end`).
    pub end: u64,
    /// File offset of `start`, in bytes (`vm_pgoff << PAGE_SHIFT`).
    pub file_offset: u64,
    /// The build id of the mapped file, zero-padded; `None` for anonymous
    /// mappings and files without one.
    pub build_id: Option<BuildId>,
}

/// Resolves instruction addresses to mappings, for build-id maps.
///
/// Implementations must not block if the map is used from a context that
/// cannot block; `ProcMaps` (feature `std`) is the one
/// for user-space profilers.
///
/// To give the kernel's answers, an implementation follows
/// `build_id_parse`: a mapping's `build_id` is that of the whole *file*
/// behind it, read from the file's start (so every mapping of one file has
/// the same id), as [`parse_build_id`](crate::parse_build_id)
/// finds it; mappings without a file (anonymous memory, `[heap]`,
/// `[stack]`, and special mappings such as `[vdso]`) have `None`.
pub trait VmaResolver {
    /// Whether the address space can be read now. `false` is the kernel's
    /// failed `mmap_read_trylock`: every frame falls back to status IP.
    fn can_access(&self) -> bool {
        true
    }

    /// The first mapping whose `end` is above `ip` (the kernel's
    /// `find_vma`), whether or not it contains `ip`.
    fn find_vma(&self, ip: u64) -> Option<Vma>;
}

impl<T: VmaResolver + ?Sized> VmaResolver for &T {
    fn can_access(&self) -> bool {
        (**self).can_access()
    }
    fn find_vma(&self, ip: u64) -> Option<Vma> {
        (**self).find_vma(ip)
    }
}

/// Turns `ips` into build-id frames as `stack_map_get_build_id_offset`
/// does, handing each to `emit` with its index.
///
/// Kernel stacks (`!user`), no resolver, or a resolver that can't access
/// the address space: every frame is status IP. Otherwise per ip: reuse the
/// last VALID mapping when `start <= ip <= end` (the kernel's inclusive
/// `range_in_vma`), else `find_vma`; a mapping with a build id gives VALID
/// with `offset = file_offset + ip - start` (wrapping, even when the
/// mapping lies above the ip), anything else status IP.
pub(crate) fn resolve_frames<R: VmaResolver + ?Sized>(
    ips: &[u64],
    user: bool,
    resolver: Option<&R>,
    mut emit: impl FnMut(usize, &StackBuildId),
) {
    let resolver = match resolver {
        Some(r) if user && r.can_access() => r,
        _ => {
            for (i, &ip) in ips.iter().enumerate() {
                emit(i, &StackBuildId::from_ip(ip));
            }
            return;
        }
    };
    let mut prev: Option<(Vma, BuildId)> = None;
    for (i, &ip) in ips.iter().enumerate() {
        let hit = match prev {
            Some((vma, id)) if vma.start <= ip && ip <= vma.end => Some((vma, id)),
            _ => resolver
                .find_vma(ip)
                .and_then(|vma| vma.build_id.map(|id| (vma, id))),
        };
        match hit {
            Some((vma, id)) => {
                let offset = vma.file_offset.wrapping_add(ip).wrapping_sub(vma.start);
                emit(i, &StackBuildId::valid(id, offset));
                prev = Some((vma, id));
            }
            None => emit(i, &StackBuildId::from_ip(ip)),
        }
    }
}

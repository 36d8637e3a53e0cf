//! `--build-id` mode: user frames are stored as `(build id, file offset)`
//! (`StackBuildId`, a map created with `BPF_F_STACK_BUILD_ID`) and
//! symbolized offline by finding the file with that build id.
//!
//! The resolver the map asks while recording is built from the process's
//! mapping snapshot (see `maps`), so it also serves processes that exit
//! before their samples are read. It reports only mappings that contain
//! the ip (the kernel's `find_vma` may return the next one up; for a
//! profiler a frame outside any file is better left as status IP).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use kstackmap::{BuildId, Vma, VmaResolver};

use crate::maps::Mapping;

/// Build ids of the files seen, read once per path; and the way back.
#[derive(Default, Debug)]
pub struct BuildIds {
    by_path: HashMap<Arc<Path>, Option<BuildId>>,
    by_id: HashMap<BuildId, Arc<Path>>,
}

impl BuildIds {
    /// The build id of `path` (zero-padded as the kernel stores it).
    pub fn of(&mut self, path: &Arc<Path>) -> Option<BuildId> {
        if let Some(id) = self.by_path.get(path) {
            return *id;
        }
        let id = if path.is_absolute() {
            blazesym::helper::read_elf_build_id(&**path)
                .ok()
                .flatten()
                .map(|raw| {
                    let mut id = BuildId::default();
                    let n = raw.len().min(id.len());
                    id[..n].copy_from_slice(&raw[..n]);
                    id
                })
        } else {
            None
        };
        self.by_path.insert(path.clone(), id);
        if let Some(id) = id {
            self.by_id.entry(id).or_insert_with(|| path.clone());
        }
        id
    }

    /// A file with this build id, among those seen.
    pub fn path_of(&self, id: &BuildId) -> Option<Arc<Path>> {
        self.by_id.get(id).cloned()
    }
}

/// One process's mappings with their build ids, as the map's resolver.
#[derive(Default, Debug)]
pub struct Resolver {
    /// Newest last, like `MapsTable`; `built_from` is how many there were.
    vmas: Vec<Vma>,
    pub built_from: usize,
}

impl Resolver {
    /// Builds the resolver for `maps` (a process's snapshot).
    pub fn new(maps: &[Mapping], ids: &mut BuildIds) -> Resolver {
        Resolver {
            vmas: maps
                .iter()
                .map(|m| Vma {
                    start: m.start,
                    end: m.end,
                    file_offset: m.pgoff,
                    build_id: ids.of(&m.path),
                })
                .collect(),
            built_from: maps.len(),
        }
    }
}

impl VmaResolver for Resolver {
    fn find_vma(&self, ip: u64) -> Option<Vma> {
        self.vmas
            .iter()
            .rev()
            .find(|v| v.start <= ip && ip < v.end)
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_executable_has_a_build_id_and_resolves() {
        let exe: Arc<Path> = Arc::from(std::env::current_exe().unwrap().as_path());
        let mut ids = BuildIds::default();
        let id = ids.of(&exe);
        // Rust binaries get a build id from the linker on Linux.
        let Some(id) = id else {
            println!("SKIPPED: {} has no build id", exe.display());
            return;
        };
        assert_eq!(ids.path_of(&id).as_deref(), Some(&*exe));
        let m = Mapping {
            start: 0x1000,
            end: 0x2000,
            pgoff: 0x3000,
            path: exe.clone(),
        };
        let r = Resolver::new(&[m], &mut ids);
        let v = r.find_vma(0x1800).unwrap();
        assert_eq!((v.file_offset, v.build_id), (0x3000, Some(id)));
        assert!(r.find_vma(0x2000).is_none());
    }
}

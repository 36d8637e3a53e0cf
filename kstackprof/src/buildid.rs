//! `--build-id` mode: user frames are stored as `(build id, file offset)`
//! (`StackBuildId`, a map created with `BPF_F_STACK_BUILD_ID`) and
//! symbolized offline by finding the file with that build id.
//!
//! The map asks a `kstackmap::ProcMaps` per process while recording:
//! `ProcMaps::for_pid` while the process lives (exactly the kernel's
//! `find_vma` over every mapping, build ids read through
//! `/proc/PID/map_files`), or, once it has exited, `ProcMaps::parse` over
//! the mapping snapshot kept from `/proc` and `PERF_RECORD_MMAP2`. A
//! process's resolver is rebuilt when new mappings show up (at most every
//! 200 ms).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kstackmap::{BuildId, ProcMaps};

use crate::maps::MapsTable;

/// Files by build id, from every `ProcMaps` built while recording.
#[derive(Default, Debug)]
pub struct BuildIds {
    by_id: HashMap<BuildId, Arc<Path>>,
}

impl BuildIds {
    fn learn(&mut self, maps: &ProcMaps) {
        for (i, m) in maps.mappings().iter().enumerate() {
            if let (Some(note), Some(path)) = (maps.build_id(i), m.file_path()) {
                self.by_id
                    .entry(note.padded())
                    .or_insert_with(|| Arc::from(Path::new(path)));
            }
        }
    }

    /// A file with this build id, among those seen.
    pub fn path_of(&self, id: &BuildId) -> Option<Arc<Path>> {
        self.by_id.get(id).cloned()
    }
}

struct Entry {
    maps: ProcMaps,
    /// How many snapshot mappings the process had when this was built.
    built_from: usize,
    at: Instant,
}

/// One `ProcMaps` per process, kept fresh.
#[derive(Default)]
pub struct Resolvers {
    by_pid: HashMap<u32, Entry>,
    pub ids: BuildIds,
}

const REFRESH: Duration = Duration::from_millis(200);

impl Resolvers {
    /// The resolver for `pid` (whose snapshot `table` already holds).
    pub fn get(&mut self, pid: u32, table: &MapsTable) -> &ProcMaps {
        let n = table.mappings(pid, table.generation(pid)).len();
        let stale = self
            .by_pid
            .get(&pid)
            .is_none_or(|e| e.built_from != n && e.at.elapsed() >= REFRESH);
        if stale {
            let maps = ProcMaps::for_pid(pid)
                .or_else(|_| ProcMaps::parse(&table.to_text(pid)))
                .unwrap_or_default();
            self.ids.learn(&maps);
            self.by_pid.insert(
                pid,
                Entry {
                    maps,
                    built_from: n,
                    at: Instant::now(),
                },
            );
        }
        match self.by_pid.get(&pid) {
            Some(e) => &e.maps,
            None => unreachable!("inserted above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kstackmap::VmaResolver;

    #[test]
    fn own_process_resolves_with_a_build_id() {
        let mut table = MapsTable::default();
        let me = std::process::id();
        table.ensure(me);
        let mut r = Resolvers::default();
        let ip = own_process_resolves_with_a_build_id as *const () as u64;
        let vma = r.get(me, &table).find_vma(ip).expect("this code is mapped");
        assert!(vma.start <= ip && ip < vma.end);
        let Some(id) = vma.build_id else {
            println!("SKIPPED: the test binary has no build id");
            return;
        };
        let exe = std::fs::canonicalize("/proc/self/exe").unwrap();
        assert_eq!(r.ids.path_of(&id).as_deref(), Some(exe.as_path()));
    }

    #[test]
    fn exited_process_falls_back_to_the_snapshot() {
        let mut table = MapsTable::default();
        let me = std::process::id();
        table.ensure(me);
        // Pretend a process that is gone had our mappings.
        let gone = u32::MAX - 1;
        table.exec(gone);
        for m in table.mappings(me, 0).to_vec() {
            table.add(gone, m);
        }
        let mut r = Resolvers::default();
        let ip = exited_process_falls_back_to_the_snapshot as *const () as u64;
        let vma = r.get(gone, &table).find_vma(ip).expect("from the snapshot");
        assert!(vma.start <= ip && ip < vma.end);
    }
}

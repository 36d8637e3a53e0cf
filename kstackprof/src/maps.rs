//! Executable mappings per process, kept while recording so that user
//! frames can be symbolized afterwards, even when the process is gone.
//!
//! Sources: `/proc/PID/maps` the first time a process is sampled (for
//! processes that were running before we attached), `PERF_RECORD_MMAP2`
//! for mappings made while recording, and `PERF_RECORD_FORK` (a child
//! starts with its parent's mappings). Newer entries shadow older ones.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// One executable mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub pgoff: u64,
    /// The mapped file, or a pseudo name such as `[vdso]`.
    pub path: Arc<Path>,
}

/// Where a user address lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    pub path: Arc<Path>,
    pub file_offset: u64,
}

/// Mappings of every process seen.
#[derive(Default, Debug)]
pub struct MapsTable {
    by_pid: HashMap<u32, Vec<Mapping>>,
}

impl MapsTable {
    /// Adds a mapping (it shadows older overlapping ones).
    pub fn add(&mut self, pid: u32, m: Mapping) {
        self.by_pid.entry(pid).or_default().push(m);
    }

    /// Reads `/proc/PID/maps` unless the process is already known.
    pub fn ensure(&mut self, pid: u32) {
        if self.by_pid.contains_key(&pid) {
            return;
        }
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        self.by_pid.insert(pid, parse_proc_maps(&text));
    }

    /// The mappings of `pid`, oldest first (empty when unknown).
    pub fn mappings(&self, pid: u32) -> &[Mapping] {
        self.by_pid.get(&pid).map_or(&[], Vec::as_slice)
    }

    /// The snapshot of `pid` as `/proc/PID/maps` text (executable
    /// mappings only; device and inode unknown, so written as 0).
    pub fn to_text(&self, pid: u32) -> String {
        self.mappings(pid)
            .iter()
            .map(|m| {
                format!(
                    "{:08x}-{:08x} r-xp {:08x} 00:00 0 {}\n",
                    m.start,
                    m.end,
                    m.pgoff,
                    m.path.display()
                )
            })
            .collect()
    }

    /// A forked child starts with a copy of its parent's mappings.
    pub fn fork(&mut self, parent: u32, child: u32) {
        if let Some(maps) = self.by_pid.get(&parent).cloned() {
            self.by_pid.insert(child, maps);
        }
    }

    /// The file and file offset of `addr` in `pid`, newest mapping first.
    pub fn locate(&self, pid: u32, addr: u64) -> Option<Located> {
        let m = self
            .by_pid
            .get(&pid)?
            .iter()
            .rev()
            .find(|m| m.start <= addr && addr < m.end)?;
        Some(Located {
            path: m.path.clone(),
            file_offset: addr.wrapping_sub(m.start).wrapping_add(m.pgoff),
        })
    }
}

/// Parses the executable mappings out of `/proc/PID/maps` text.
pub fn parse_proc_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.splitn(6, ' ');
            let (range, perms, off) = (f.next()?, f.next()?, f.next()?);
            let (_dev, _inode) = (f.next()?, f.next()?);
            let path = f.next().unwrap_or("").trim_start();
            if !perms.contains('x') || path.is_empty() {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(a, 16).ok()?,
                end: u64::from_str_radix(b, 16).ok()?,
                pgoff: u64::from_str_radix(off, 16).ok()?,
                path: Arc::from(Path::new(path)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_locates() {
        let text = "\
55d0c0a00000-55d0c0a20000 r--p 00000000 08:01 123 /usr/bin/perl
55d0c0a20000-55d0c0b00000 r-xp 00020000 08:01 123 /usr/bin/perl
7ffd1e1f2000-7ffd1e1f4000 r-xp 00000000 00:00 0                          [vdso]
7ffd1e000000-7ffd1e100000 rw-p 00000000 00:00 0
";
        let maps = parse_proc_maps(text);
        assert_eq!(maps.len(), 2);
        let mut t = MapsTable::default();
        for m in maps {
            t.add(1, m);
        }
        let l = t.locate(1, 0x55d0c0a20010).unwrap();
        assert_eq!(&*l.path, Path::new("/usr/bin/perl"));
        assert_eq!(l.file_offset, 0x20010);
        assert_eq!(
            &*t.locate(1, 0x7ffd1e1f2001).unwrap().path,
            Path::new("[vdso]")
        );
        assert_eq!(t.locate(1, 0x1), None);
        assert!(t
            .to_text(1)
            .starts_with("55d0c0a20000-55d0c0b00000 r-xp 00020000 00:00 0 /usr/bin/perl\n"));
        t.fork(1, 2);
        assert!(t.locate(2, 0x55d0c0a20010).is_some());
    }
}

//! Executable mappings per process, kept while recording so that user
//! frames can be symbolized afterwards, even when the process is gone.
//!
//! Sources: `/proc/PID/maps` the first time a process is seen (for
//! processes that were running before we attached; all of them at the
//! start of a system-wide recording), `PERF_RECORD_MMAP2` for mappings
//! made while recording, `PERF_RECORD_FORK` (a child starts with its
//! parent's mappings) and `PERF_RECORD_COMM` with the exec flag (a new
//! image: a new generation). Newer entries shadow older ones.

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

/// Mappings of every process seen, per exec: an `execve` starts a new
/// generation (the old image's mappings are gone), and samples remember the
/// generation they were taken in, so a process that exec'd while recorded
/// resolves both before and after.
#[derive(Default, Debug)]
pub struct MapsTable {
    by_pid: HashMap<u32, Vec<Vec<Mapping>>>,
}

impl MapsTable {
    /// Adds a mapping to the current generation of `pid` (it shadows older
    /// overlapping ones). A process not seen before is read from `/proc`
    /// first, so that it has the mappings made before recording too.
    pub fn add(&mut self, pid: u32, m: Mapping) {
        self.ensure(pid);
        if let Some(g) = self.by_pid.get_mut(&pid).and_then(|g| g.last_mut()) {
            g.push(m);
        }
    }

    /// Reads `/proc/PID/maps` unless the process is already known.
    pub fn ensure(&mut self, pid: u32) {
        if self.by_pid.contains_key(&pid) {
            return;
        }
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        self.by_pid.insert(pid, vec![parse_proc_maps(&text)]);
    }

    /// Reads `/proc/PID/maps` of every process on the machine (a
    /// system-wide recording starts with this, as `perf record -a` does,
    /// so that processes that exit before their first sample is read
    /// still resolve).
    pub fn snapshot_all(&mut self) {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
                self.ensure(pid);
            }
        }
    }

    /// The processes known.
    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_pid.keys().copied()
    }

    /// The current generation of `pid` (0 when unknown).
    pub fn generation(&self, pid: u32) -> u32 {
        self.by_pid
            .get(&pid)
            .map_or(0, |g| g.len().saturating_sub(1) as u32)
    }

    /// `pid` ran `execve`: a new, empty generation (its mappings arrive as
    /// `PERF_RECORD_MMAP2`).
    pub fn exec(&mut self, pid: u32) {
        self.by_pid.entry(pid).or_default().push(Vec::new());
    }

    /// The mappings of `pid` in generation `gen`, oldest first (empty when
    /// unknown).
    pub fn mappings(&self, pid: u32, gen: u32) -> &[Mapping] {
        self.by_pid
            .get(&pid)
            .and_then(|g| g.get(gen as usize))
            .map_or(&[], Vec::as_slice)
    }

    /// The current snapshot of `pid` as `/proc/PID/maps` text (executable
    /// mappings only; device and inode unknown, so written as 0).
    pub fn to_text(&self, pid: u32) -> String {
        self.mappings(pid, self.generation(pid))
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

    /// A forked child starts with a copy of its parent's current mappings.
    pub fn fork(&mut self, parent: u32, child: u32) {
        self.ensure(parent);
        let maps = self.mappings(parent, self.generation(parent)).to_vec();
        self.by_pid.insert(child, vec![maps]);
    }

    /// The file and file offset of `addr` in `pid` (generation `gen`),
    /// newest mapping first.
    pub fn locate(&self, pid: u32, gen: u32, addr: u64) -> Option<Located> {
        let m = self
            .mappings(pid, gen)
            .iter()
            .rev()
            .find(|m| m.start <= addr && addr < m.end)?;
        Some(Located {
            path: m.path.clone(),
            file_offset: addr.wrapping_sub(m.start).wrapping_add(m.pgoff),
        })
    }
}

/// Whether a mapping's name is an anonymous one (JIT code: `//anon` in
/// `PERF_RECORD_MMAP2`, empty or `[anon:...]` in `/proc/PID/maps`), whose
/// symbols can only come from a perf map file.
pub fn is_anon(path: &Path) -> bool {
    let s = path.as_os_str().as_encoded_bytes();
    s.is_empty() || s == b"//anon" || s.starts_with(b"[anon")
}

/// Parses the executable mappings out of `/proc/PID/maps` text.
pub fn parse_proc_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.splitn(6, ' ');
            let (range, perms, off) = (f.next()?, f.next()?, f.next()?);
            let (_dev, _inode) = (f.next()?, f.next()?);
            let path = f.next().unwrap_or("").trim_start();
            if !perms.contains('x') {
                return None;
            }
            // Anonymous executable memory (JIT code) is kept under the
            // name perf gives it, for perf map files.
            let path = if path.is_empty() { "//anon" } else { path };
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
7ffd1f000000-7ffd1f100000 rwxp 00000000 00:00 0
";
        let maps = parse_proc_maps(text);
        assert_eq!(maps.len(), 3);
        assert!(is_anon(&maps[2].path));
        let mut t = MapsTable::default();
        // A pid that is not running: nothing to read from /proc.
        let pid = u32::MAX - 3;
        t.exec(pid);
        for m in maps {
            t.add(pid, m);
        }
        let l = t.locate(pid, 0, 0x55d0c0a20010).unwrap();
        assert_eq!(&*l.path, Path::new("/usr/bin/perl"));
        assert_eq!(l.file_offset, 0x20010);
        assert_eq!(
            &*t.locate(pid, 0, 0x7ffd1e1f2001).unwrap().path,
            Path::new("[vdso]")
        );
        assert_eq!(t.locate(pid, 0, 0x1), None);
        assert!(t
            .to_text(pid)
            .starts_with("55d0c0a20000-55d0c0b00000 r-xp 00020000 00:00 0 /usr/bin/perl\n"));
        t.fork(pid, pid - 1);
        assert!(t.locate(pid - 1, 0, 0x55d0c0a20010).is_some());
        // After an exec the old image is gone from the new generation
        // but still there for samples taken before it.
        t.exec(pid);
        assert_eq!(t.generation(pid), 1);
        assert_eq!(t.locate(pid, 1, 0x55d0c0a20010), None);
        assert!(t.locate(pid, 0, 0x55d0c0a20010).is_some());
    }
}

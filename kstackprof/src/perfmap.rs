//! Perf map files: `/tmp/perf-PID.map`, written by JIT runtimes (Node with
//! `--perf-basic-prof`, the JVM with perf-map-agent, .NET with
//! `DOTNET_PerfMapEnabled=1`, Python 3.12 with `-X perf`, LuaJIT, ...) to
//! name the code they generate. One symbol a line: `START SIZE NAME`, start
//! and size in hex (with or without `0x`), the name to the end of the line.

use std::path::Path;

/// The symbols of one perf map file, sorted by start.
#[derive(Debug, Default)]
pub struct PerfMap {
    syms: Vec<(u64, u64, String)>,
}

impl PerfMap {
    /// `/tmp/perf-PID.map`, if there is one.
    pub fn for_pid(pid: u32) -> Option<PerfMap> {
        Self::read(Path::new(&format!("/tmp/perf-{pid}.map")))
    }

    /// Reads a perf map file.
    pub fn read(path: &Path) -> Option<PerfMap> {
        let text = std::fs::read_to_string(path).ok()?;
        Some(Self::parse(&text))
    }

    /// Parses perf map text; malformed lines are skipped.
    pub fn parse(text: &str) -> PerfMap {
        let hex = |s: &str| {
            let s = s.strip_prefix("0x").unwrap_or(s);
            u64::from_str_radix(s, 16).ok()
        };
        let mut syms: Vec<(u64, u64, String)> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, ' ');
                let start = hex(f.next()?)?;
                let size = hex(f.next()?)?;
                let name = f.next()?.trim();
                (!name.is_empty()).then(|| (start, size, name.replace(';', ":")))
            })
            .collect();
        // Stable: for equal starts the later line (newer code) wins below.
        syms.sort_by_key(|s| s.0);
        PerfMap { syms }
    }

    /// The symbol covering `addr`: among those that start at or below it,
    /// the last (newest) one whose range holds it.
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let n = self.syms.partition_point(|s| s.0 <= addr);
        self.syms[..n]
            .iter()
            .rev()
            .take(64)
            .find(|s| addr < s.0.saturating_add(s.1.max(1)))
            .map(|s| s.2.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_looks_up() {
        let m = PerfMap::parse(
            "7f0000001000 40 LazyCompile:~foo /app/x.js:1\n\
             0x7f0000002000 0x10 bar;baz\n\
             garbage line\n\
             7f0000000100 10 early\n",
        );
        assert_eq!(
            m.lookup(0x7f00_0000_1000),
            Some("LazyCompile:~foo /app/x.js:1")
        );
        assert_eq!(
            m.lookup(0x7f00_0000_103f),
            Some("LazyCompile:~foo /app/x.js:1")
        );
        assert_eq!(m.lookup(0x7f00_0000_1040), None);
        assert_eq!(m.lookup(0x7f00_0000_2008), Some("bar:baz"));
        assert_eq!(m.lookup(0x7f00_0000_0105), Some("early"));
        assert_eq!(m.lookup(0x10), None);
    }
}

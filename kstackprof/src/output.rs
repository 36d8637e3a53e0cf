//! Outputs: `stacks.folded` (flamegraph input, root first), `flamegraph.svg`
//! (rendered with inferno), and the top-N self/total table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{anyhow, Context, Result};

use std::borrow::Cow;

use crate::symbolize::{display_name, Stack};

/// Creates `dir` and checks that files can be written there, before any
/// recording starts.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)
        .map_err(|e| anyhow!("output directory {} is not writable: {e}", dir.display()))?;
    let probe = dir.join(format!(".kstackprof-write-test-{}", std::process::id()));
    fs::write(&probe, b"")
        .map_err(|e| anyhow!("output directory {} is not writable: {e}", dir.display()))?;
    let _ = fs::remove_file(probe);
    Ok(())
}

/// What the root frame of each folded stack names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Root {
    /// The thread's name (`comm`), as BCC's `profile` and perf do.
    #[default]
    Comm,
    /// The process: `name (pid N)`.
    Process,
    /// The process, then the thread under it: `name (pid N);name (tid M)`.
    Thread,
}

/// The root frames of `s` for `mode`.
pub fn roots(s: &Stack, mode: Root) -> Vec<String> {
    let clean = |n: &str| n.replace(';', ":");
    let process = || format!("{} (pid {})", clean(&s.pcomm), s.pid);
    match mode {
        Root::Comm => vec![clean(&s.comm)],
        Root::Process => vec![process()],
        Root::Thread => vec![process(), format!("{} (tid {})", clean(&s.comm), s.tid)],
    }
}

/// Folded lines (`frame;frame;... count`, root first), merged and sorted.
pub fn folded(stacks: &[Stack], mode: Root) -> Vec<String> {
    let mut merged: BTreeMap<String, u64> = BTreeMap::new();
    for s in stacks {
        let mut line = roots(s, mode).join(";");
        for f in &s.frames {
            line.push(';');
            line.push_str(&display_name(f));
        }
        *merged.entry(line).or_insert(0) += s.count;
    }
    merged
        .into_iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect()
}

/// Writes `stacks.folded` and `flamegraph.svg` into `dir`.
///
/// # Errors
/// A file could not be written.
pub fn write_folded_and_svg(dir: &Path, stacks: &[Stack], mode: Root, title: &str) -> Result<()> {
    let lines = folded(stacks, mode);
    let path = dir.join("stacks.folded");
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;

    let svg = dir.join("flamegraph.svg");
    let file = fs::File::create(&svg).with_context(|| format!("writing {}", svg.display()))?;
    let mut w = BufWriter::new(file);
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    opts.count_name = "samples".to_string();
    opts.deterministic = true;
    if lines.is_empty() {
        // inferno refuses empty input; leave a valid, empty picture.
        writeln!(
            w,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1200\" height=\"60\">\
             <text x=\"600\" y=\"30\" text-anchor=\"middle\">{title}: no samples</text></svg>"
        )?;
    } else {
        inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), &mut w)
            .with_context(|| format!("rendering {}", svg.display()))?;
    }
    w.flush()?;
    Ok(())
}

/// Self and total sample counts per function name.
#[derive(Clone, Debug, Default)]
pub struct Shares {
    pub total_samples: u64,
    /// name -> (self, total)
    pub by_name: HashMap<String, (u64, u64)>,
}

impl Shares {
    /// Self counts the innermost frame; total counts every function once
    /// per stack (recursion is not counted twice). Root frames (thread,
    /// process) are not functions and are not counted.
    pub fn of(stacks: &[Stack]) -> Shares {
        let mut sh = Shares::default();
        for s in stacks {
            sh.total_samples += s.count;
            let names: Vec<Cow<'_, str>> = s.frames.iter().map(display_name).collect();
            if let Some(leaf) = names.last() {
                sh.by_name.entry(leaf.to_string()).or_default().0 += s.count;
            }
            let uniq: HashSet<&str> = names.iter().map(|n| n.as_ref()).collect();
            for f in uniq {
                sh.by_name.entry(f.to_string()).or_default().1 += s.count;
            }
        }
        sh
    }

    /// The `n` rows of the table: (name, self, total), by self time, then
    /// total, then name.
    pub fn rows(&self, n: usize) -> Vec<(&str, u64, u64)> {
        let mut rows: Vec<(&str, u64, u64)> = self
            .by_name
            .iter()
            .map(|(k, &(s, t))| (k.as_str(), s, t))
            .collect();
        rows.sort_by(|a, b| (b.1, b.2, a.0).cmp(&(a.1, a.2, b.0)));
        rows.truncate(n);
        rows
    }

    /// Percentage of all samples.
    pub fn pct(&self, n: u64) -> f64 {
        if self.total_samples == 0 {
            0.0
        } else {
            100.0 * n as f64 / self.total_samples as f64
        }
    }

    /// The table, `n` rows by self time (then total).
    pub fn table(&self, n: usize) -> String {
        let mut out = format!(
            "{:>7} {:>7}  {}  ({} samples)\n",
            "SELF%", "TOTAL%", "FUNCTION", self.total_samples
        );
        for (name, slf, tot) in self.rows(n) {
            out.push_str(&format!(
                "{:>6.2}% {:>6.2}%  {}\n",
                self.pct(slf),
                self.pct(tot),
                name
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::{Frame, Kind};

    fn st(frames: &[&str], count: u64) -> Stack {
        Stack {
            pid: 10,
            tid: 11,
            comm: "a-thread".into(),
            pcomm: "a".into(),
            frames: frames
                .iter()
                .map(|s| match s.strip_suffix("_[k]") {
                    Some(k) => Frame {
                        name: k.to_string(),
                        kind: Kind::Kernel,
                        addr: 0,
                        file: None,
                        source: None,
                        inlined: false,
                    },
                    None => Frame {
                        name: s.to_string(),
                        kind: Kind::User,
                        addr: 0,
                        file: None,
                        source: None,
                        inlined: false,
                    },
                })
                .collect(),
            count,
        }
    }

    #[test]
    fn folded_merges_and_sorts() {
        let s = [
            st(&["main", "f"], 2),
            st(&["main", "f"], 3),
            st(&["main"], 1),
            st(&["main", "read", "vfs_read_[k]"], 1),
        ];
        assert_eq!(
            folded(&s, Root::Comm),
            vec![
                "a-thread;main 1",
                "a-thread;main;f 5",
                "a-thread;main;read;vfs_read_[k] 1"
            ]
        );
        assert_eq!(folded(&s[2..3], Root::Process), vec!["a (pid 10);main 1"]);
        assert_eq!(
            folded(&s[2..3], Root::Thread),
            vec!["a (pid 10);a-thread (tid 11);main 1"]
        );
    }

    #[test]
    fn shares_count_self_and_total_once() {
        let s = [st(&["main", "f", "f"], 3), st(&["main", "g_[k]"], 1)];
        let sh = Shares::of(&s);
        assert_eq!(sh.total_samples, 4);
        assert_eq!(sh.by_name["f"], (3, 3));
        assert_eq!(sh.by_name["main"], (0, 4));
        assert_eq!(sh.by_name["g_[k]"], (1, 1));
        assert!(sh.table(10).contains("75.00%"));
        assert_eq!(sh.rows(1), vec![("f", 3, 3)]);
    }
}

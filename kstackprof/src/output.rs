//! Outputs: `stacks.folded` (flamegraph input, root first), `flamegraph.svg`
//! (rendered with inferno), and the top-N self/total table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{anyhow, Context, Result};

use crate::symbolize::Stack;

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

/// Folded lines (`frame;frame;... count`), merged and sorted.
pub fn folded(stacks: &[Stack]) -> Vec<String> {
    let mut merged: BTreeMap<String, u64> = BTreeMap::new();
    for s in stacks {
        *merged.entry(s.frames.join(";")).or_insert(0) += s.count;
    }
    merged
        .into_iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect()
}

/// Writes `stacks.folded` and `flamegraph.svg` into `dir`.
pub fn write_all(dir: &Path, stacks: &[Stack], title: &str) -> Result<()> {
    let lines = folded(stacks);
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
    /// Self counts the innermost frame; total counts every frame once per stack.
    /// The first frame (the comm) is not a function and is skipped.
    pub fn of(stacks: &[Stack]) -> Shares {
        let mut sh = Shares::default();
        for s in stacks {
            sh.total_samples += s.count;
            let funcs = s.frames.get(1..).unwrap_or(&[]);
            if let Some(leaf) = funcs.last() {
                sh.by_name.entry(leaf.clone()).or_default().0 += s.count;
            }
            let uniq: HashSet<&String> = funcs.iter().collect();
            for f in uniq {
                sh.by_name.entry(f.clone()).or_default().1 += s.count;
            }
        }
        sh
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
        let mut rows: Vec<(&String, &(u64, u64))> = self.by_name.iter().collect();
        rows.sort_by(|a, b| (b.1 .0, b.1 .1, a.0).cmp(&(a.1 .0, a.1 .1, b.0)));
        let mut out = format!(
            "{:>7} {:>7}  {}  ({} samples)\n",
            "SELF%", "TOTAL%", "FUNCTION", self.total_samples
        );
        for (name, &(slf, tot)) in rows.into_iter().take(n) {
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

    fn st(frames: &[&str], count: u64) -> Stack {
        Stack {
            frames: frames.iter().map(|s| s.to_string()).collect(),
            count,
        }
    }

    #[test]
    fn folded_merges_and_sorts() {
        let s = [
            st(&["a", "main", "f"], 2),
            st(&["a", "main", "f"], 3),
            st(&["a", "main"], 1),
        ];
        assert_eq!(folded(&s), vec!["a;main 1", "a;main;f 5"]);
    }

    #[test]
    fn shares_count_self_and_total_once() {
        let s = [st(&["a", "main", "f", "f"], 3), st(&["a", "main", "g"], 1)];
        let sh = Shares::of(&s);
        assert_eq!(sh.total_samples, 4);
        assert_eq!(sh.by_name["f"], (3, 3));
        assert_eq!(sh.by_name["main"], (0, 4));
        assert!(sh.table(10).contains("75.00%"));
    }
}

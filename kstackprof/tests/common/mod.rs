//! Helpers shared by the integration tests (each test file uses a part).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_kstackprof");

/// A fresh directory under the system temp dir.
pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kstackprof-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs kstackprof with `args`, echoing its output for the test log.
pub fn run(args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run kstackprof");
    eprintln!(
        "$ kstackprof {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `stacks.folded` as (frames root first, count).
pub fn read_folded(dir: &Path) -> Vec<(Vec<String>, u64)> {
    let text = std::fs::read_to_string(dir.join("stacks.folded")).expect("stacks.folded");
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (stack, n) = l.rsplit_once(' ').expect("count");
            (
                stack.split(';').map(str::to_string).collect(),
                n.parse().expect("count"),
            )
        })
        .collect()
}

/// Self and total shares (percent) of stacks given root first, with
/// `skip` root frames that are not functions.
pub fn shares<'a>(
    stacks: impl IntoIterator<Item = (&'a [String], u64)>,
    skip: usize,
) -> (HashMap<String, f64>, HashMap<String, f64>, u64) {
    let mut slf: HashMap<String, u64> = HashMap::new();
    let mut tot: HashMap<String, u64> = HashMap::new();
    let mut all = 0;
    for (frames, n) in stacks {
        let funcs = frames.get(skip..).unwrap_or(&[]);
        all += n;
        if let Some(leaf) = funcs.last() {
            *slf.entry(leaf.clone()).or_default() += n;
        }
        let mut seen: Vec<&String> = funcs.iter().collect();
        seen.sort();
        seen.dedup();
        for f in seen {
            *tot.entry(f.clone()).or_default() += n;
        }
    }
    let pct = |m: HashMap<String, u64>| {
        m.into_iter()
            .map(|(k, v)| (k, 100.0 * v as f64 / all.max(1) as f64))
            .collect()
    };
    (pct(slf), pct(tot), all)
}

/// The `n` largest entries, largest first.
pub fn top(shares: &HashMap<String, f64>, n: usize) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = shares.iter().map(|(k, &p)| (k.clone(), p)).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// `perf script` callchains of the samples of `comm`, root first. Kernel
/// frames get the `_[k]` suffix kstackprof gives them.
pub fn perf_stacks(data: &Path, comm: &str) -> Option<Vec<(Vec<String>, u64)>> {
    let out = Command::new("perf")
        .args(["script", "-F", "comm,ip,sym", "--comms", comm, "-i"])
        .arg(data)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut stacks = Vec::new();
    let mut cur: Option<Vec<String>> = None;
    for line in text.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if let Some(mut s) = cur.take() {
                s.reverse();
                stacks.push((s, 1));
            }
        } else if !line.starts_with(char::is_whitespace) {
            cur = Some(Vec::new());
        } else if let Some(s) = cur.as_mut() {
            // "   ffffffff81000000 name+0x10 (/path)" or "7f.. [unknown] (..)"
            let mut f = line.trim().splitn(2, char::is_whitespace);
            let ip = u64::from_str_radix(f.next().unwrap_or(""), 16).unwrap_or(0);
            let sym = f.next().unwrap_or("").trim();
            let sym = sym.split(" (").next().unwrap_or(sym).trim();
            let sym = sym.rsplit_once("+0x").map_or(sym, |(s, _)| s);
            let name = if ip >= 0xffff_8000_0000_0000 {
                format!("{sym}_[k]")
            } else {
                sym.to_string()
            };
            s.push(name);
        }
    }
    Some(stacks)
}

/// Builds `tests/NAME.c` with frame pointers into `dir/ksp-NAME`; `None`
/// (after saying SKIPPED) when there is no gcc.
pub fn build_c(dir: &Path, name: &str) -> Option<PathBuf> {
    let exe = dir.join(format!("ksp-{name}"));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/{name}.c"));
    match Command::new("gcc")
        .args(["-O1", "-fno-omit-frame-pointer", "-g", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
    {
        Ok(s) if s.success() => Some(exe),
        Ok(s) => panic!("gcc failed on {}: {s}", src.display()),
        Err(e) => {
            println!("SKIPPED: gcc is not installed ({e}); no C workload to profile");
            None
        }
    }
}

/// `tests/accuracy.c`, built (see [`build_c`]).
pub fn build_accuracy(dir: &Path) -> Option<PathBuf> {
    build_c(dir, "accuracy")
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// Whether the one-line error `needle` came, and nothing else.
pub fn assert_one_line_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    assert!(!err.contains("backtrace"), "{err}");
}

/// Processes whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|s| s.parse::<u32>().is_ok())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

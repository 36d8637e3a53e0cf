//! Turns the results of `cargo bench --bench compare` into one table.
//!
//! ```text
//! cargo run --release --example bench_report -- [--baselines a,b,..] [--load TEXT] [--write FILE]
//! ```
//!
//! Reads `target/criterion/<workload>/<peer>/<threads>/<baseline>/estimates.json`
//! (baseline `new` by default: the last run). With several baselines (runs
//! saved with `--save-baseline NAME`), each cell is the best (lowest) median
//! over the runs and the spread column says how far apart the runs were.
//! Ratios are peer / kstackmap: above 1 means kstackmap is faster.
//! `--write` puts the table, the targets, memory and the machine into a
//! markdown file (docs/benchmarks.md), replacing only the part between its
//! `bench_report` markers so the hand-written findings around it stay.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use kstackmap::{Config, MapAttr, StackMap};

const WORKLOADS: [&str; 5] = ["hit", "churn", "lookup", "mix", "steal"];
const PEERS: [&str; 7] = [
    "kstackmap",
    "floor",
    "kernel",
    "mutex",
    "dashmap",
    "papaya",
    "depot",
];
const THREADS: [usize; 4] = [1, 2, 4, 8];
/// `sizeof(struct bpf_stack_map)` on Linux 6.18 x86-64: the constant part
/// of the `memlock:` line in the map's fdinfo (read off the live kernel:
/// memlock - n_buckets * 8 - max_entries * (16 + value_size) = 320 for
/// every attr tried).
const KERNEL_MAP_STRUCT: usize = 320;
/// The kernel's per-element header, `struct stack_map_bucket` without data.
const KERNEL_ELEM_HEADER: usize = 16;

struct Args {
    baselines: Vec<String>,
    load: Option<String>,
    write: Option<PathBuf>,
    criterion_dir: PathBuf,
}

fn args() -> Args {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let mut a = Args {
        baselines: vec!["new".into()],
        load: None,
        write: None,
        criterion_dir: Path::new(&target).join("criterion"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--baselines" => a.baselines = val().split(',').map(String::from).collect(),
            "--load" => a.load = Some(val()),
            "--write" => a.write = Some(val().into()),
            "--criterion-dir" => a.criterion_dir = val().into(),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// Median ns/op of one benchmark in one baseline (criterion's median of
/// its samples: on a shared machine a sample in which one thread was
/// descheduled is an outlier the mean would carry).
fn median_ns(
    dir: &Path,
    workload: &str,
    peer: &str,
    threads: usize,
    baseline: &str,
) -> Option<f64> {
    let path = dir
        .join(workload)
        .join(peer)
        .join(threads.to_string())
        .join(baseline)
        .join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

/// Best median over the baselines and the spread (worst / best).
#[derive(Clone, Copy)]
struct Cell {
    best: f64,
    spread: f64,
}

fn cells(a: &Args) -> BTreeMap<(usize, usize, usize), Cell> {
    let mut m = BTreeMap::new();
    for (w, workload) in WORKLOADS.iter().enumerate() {
        for &threads in &THREADS {
            for (p, peer) in PEERS.iter().enumerate() {
                let runs: Vec<f64> = a
                    .baselines
                    .iter()
                    .filter_map(|b| median_ns(&a.criterion_dir, workload, peer, threads, b))
                    .collect();
                if runs.is_empty() {
                    continue;
                }
                let best = runs.iter().cloned().fold(f64::INFINITY, f64::min);
                let worst = runs.iter().cloned().fold(0.0, f64::max);
                m.insert(
                    (w, threads, p),
                    Cell {
                        best,
                        spread: worst / best,
                    },
                );
            }
        }
    }
    m
}

fn throughput_table(m: &BTreeMap<(usize, usize, usize), Cell>, runs: usize) -> String {
    let mut s = String::new();
    s.push_str("| workload | threads |");
    for peer in PEERS {
        let _ = write!(s, " {peer} |");
    }
    s.push_str(" spread |\n|---|---:|");
    for _ in PEERS {
        s.push_str("---:|");
    }
    s.push_str("---:|\n");
    for (w, workload) in WORKLOADS.iter().enumerate() {
        for &threads in &THREADS {
            if (0..PEERS.len()).all(|p| !m.contains_key(&(w, threads, p))) {
                continue; // not measured at this thread count (steal at 1)
            }
            let ks = m.get(&(w, threads, 0)).map(|c| c.best);
            let floor = m.get(&(w, threads, 1)).map(|c| c.best);
            let _ = write!(s, "| {workload} | {threads} |");
            let mut spread: f64 = 1.0;
            for p in 0..PEERS.len() {
                match m.get(&(w, threads, p)) {
                    None => s.push_str(" – |"),
                    Some(c) => {
                        spread = spread.max(c.spread);
                        if p == 0 {
                            match floor {
                                Some(f) => {
                                    let _ =
                                        write!(s, " {:.1} ({:.2}x floor) |", c.best, c.best / f);
                                }
                                None => {
                                    let _ = write!(s, " **{:.1}** |", c.best);
                                }
                            }
                        } else if let Some(k) = ks {
                            let _ = write!(s, " {:.1} ({:.2}x) |", c.best, c.best / k);
                        } else {
                            let _ = write!(s, " {:.1} |", c.best);
                        }
                    }
                }
            }
            if runs > 1 {
                let _ = writeln!(s, " {:.0}% |", (spread - 1.0) * 100.0);
            } else {
                s.push_str(" – |\n");
            }
        }
    }
    s
}

/// The targets of issue 15, each MET or MISSED with the ratio behind it
/// (lines for cells that were not measured are left out).
fn targets(m: &BTreeMap<(usize, usize, usize), Cell>) -> String {
    let get = |w: usize, t: usize, p: usize| m.get(&(w, t, p)).map(|c| c.best);
    let mut s = String::new();
    let mut line = |ok: bool, text: String| {
        let _ = writeln!(s, "- {} {text}", if ok { "MET" } else { "MISSED" });
    };
    let (hit, churn, lookup, mix, steal) = (0, 1, 2, 3, 4);
    let (ks, floor, kernel, dashmap, papaya) = (0, 1, 2, 4, 5);
    if let (Some(k), Some(f)) = (get(hit, 1, ks), get(hit, 1, floor)) {
        line(
            k / f <= 0.5,
            format!(
                "hit at most 0.5x the floor (1 thread): {:.2}x ({k:.1} vs {f:.1} ns/op)",
                k / f
            ),
        );
    }
    for (w, name) in [(hit, "hit"), (mix, "mix")] {
        for t in [1, 2] {
            for (p, peer) in [(dashmap, "DashMap"), (papaya, "papaya")] {
                if let (Some(k), Some(x)) = (get(w, t, ks), get(w, t, p)) {
                    line(
                        x / k > 1.0,
                        format!("{name}, {t} thread(s): ahead of {peer}: {:.2}x", x / k),
                    );
                }
            }
        }
    }
    for t in [1, 2, 4] {
        if let (Some(k), Some(kp)) = (get(churn, t, ks), get(churn, t, kernel)) {
            line(
                kp / k >= 1.2,
                format!(
                    "churn, {t} thread(s): at least 1.2x the spinlocked kernel port: {:.2}x",
                    kp / k
                ),
            );
        }
    }
    for t in [1, 2, 4, 8] {
        if let (Some(k), Some(kp)) = (get(lookup, t, ks), get(lookup, t, kernel)) {
            line(
                kp / k >= 1.0,
                format!(
                    "lookup, {t} reader(s): at least the kernel port's: {:.2}x",
                    kp / k
                ),
            );
        }
    }
    for t in [2, 4, 8] {
        if let (Some(k), Some(kp)) = (get(steal, t, ks), get(steal, t, kernel)) {
            line(
                kp / k >= 1.0,
                format!(
                    "steal, {t} threads (1 drains): ahead of the kernel port: {:.2}x",
                    kp / k
                ),
            );
        }
    }
    s
}

fn memory_table() -> String {
    let attrs: [(u32, u32, u32); 5] = [
        (1, 8, 0),
        (1_024, 1_016, 0),
        (1_025, 1_016, 0),
        (16_384, 1_016, 0),
        (10_000, 512, 0),
    ];
    let mut s = String::from(
        "| max_entries | value_size | n_buckets | kernel mem_usage | kstackmap mem_usage | ratio |\n\
         |---:|---:|---:|---:|---:|---:|\n",
    );
    for (max_entries, value_size, map_flags) in attrs {
        let n_buckets = max_entries.next_power_of_two() as usize;
        let kernel = KERNEL_MAP_STRUCT
            + n_buckets * 8
            + max_entries as usize * (KERNEL_ELEM_HEADER + value_size as usize);
        let ours = kstackmap_mem(max_entries, value_size, map_flags);
        let _ = writeln!(
            s,
            "| {max_entries} | {value_size} | {n_buckets} | {kernel} | {} | {} |",
            ours.map_or("–".into(), |o| o.to_string()),
            ours.map_or("–".into(), |o| format!("{:.3}", o as f64 / kernel as f64)),
        );
    }
    // Per-element bytes beyond the data, measured: two maps with the same
    // n_buckets, 1,023 elements apart.
    if let (Some(a), Some(b)) = (
        kstackmap_mem(1_025, 1_016, 0),
        kstackmap_mem(2_048, 1_016, 0),
    ) {
        let per_elem = (b - a) as f64 / 1_023.0 - 1_016.0;
        let _ = writeln!(
            s,
            "\nPer-element header: kstackmap {per_elem:.1} bytes (from mem_usage), kernel \
             {KERNEL_ELEM_HEADER} bytes (`struct stack_map_bucket`)."
        );
    }
    s
}

/// `StackMap::mem_usage()` for an ips map with this machine's CPU count.
fn kstackmap_mem(max_entries: u32, value_size: u32, map_flags: u32) -> Option<usize> {
    let attr = MapAttr {
        max_entries,
        key_size: 4,
        value_size,
        map_flags,
        numa_node: 0,
    };
    let cfg = Config {
        nr_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        max_stack: 127,
    };
    StackMap::with_config(&attr, cfg)
        .ok()
        .map(|m| m.mem_usage())
}

fn machine(load: Option<&str>) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let rustc = std::process::Command::new("rustc")
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(s, "- CPU: {cpu}, nproc = {nproc}");
    let _ = writeln!(s, "- kernel: {kernel}");
    let _ = writeln!(s, "- {rustc}");
    let _ = writeln!(
        s,
        "- load average when the report was made: {}",
        loadavg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Some(l) = load {
        let _ = writeln!(s, "- load during the runs: {l}");
    }
    s
}

fn main() {
    let a = args();
    let m = cells(&a);
    let table = throughput_table(&m, a.baselines.len());
    let targets = targets(&m);
    let memory = memory_table();
    let machine = machine(a.load.as_deref());
    let runs = if a.baselines.len() > 1 {
        format!(
            "best of {} runs ({}); spread = slowest / fastest run - 1, worst cell of the row",
            a.baselines.len(),
            a.baselines.join(", ")
        )
    } else {
        "one run".into()
    };
    let doc = format!(
        "## Throughput: aggregate ns/op ({runs})\n\n\
         Each cell: ns per operation over all threads (wall time / total ops; criterion's\n\
         median sample), and in parentheses peer / kstackmap (above 1: kstackmap is\n\
         faster). The kstackmap cell of the hit path is compared with the floor instead.\n\n\
         {table}\n\
         ## Targets\n\n{targets}\n## Memory\n\n{memory}\n## Machine\n\n{machine}"
    );
    println!("{doc}");
    if let Some(path) = a.write {
        write_doc(&path, &doc);
        eprintln!("wrote {}", path.display());
    }
}

const START: &str = "<!-- bench_report: generated from here -->\n";
const END: &str = "<!-- bench_report: generated up to here -->\n";

/// Replaces the generated part of `path` (between the markers), keeping
/// the hand-written text around it; a new file gets `HEADER` first.
fn write_doc(path: &Path, doc: &str) {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let text = match (old.find(START), old.find(END)) {
        (Some(s), Some(e)) if s < e => {
            format!("{}{START}{doc}{}", &old[..s], &old[e..])
        }
        _ => format!("{HEADER}{START}{doc}{END}"),
    };
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

const HEADER: &str = "# Benchmarks\n\n\
Generated by `bash scripts/bench` (`cargo bench --bench compare`, then\n\
`cargo run --release --example bench_report`). Workloads, peers and method are\n\
described at the top of `benches/compare.rs`; the kernel port is\n\
`benches/kernel_port.rs`. The machine is shared: see the load below.\n\n";

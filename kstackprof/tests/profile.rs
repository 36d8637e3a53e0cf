//! End-to-end tests of the built binary: the demo's designed shares, a real
//! program against `perf record -g`, and the errors a person sees.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::{
    assert_one_line_error, build_c, is_root as unsafe_is_root, read_folded, run, tmpdir, BIN,
};

/// Percent of samples whose stack contains `name` anywhere (total time).
fn total_share(folded: &[(Vec<String>, u64)], name: &str) -> f64 {
    let all: u64 = folded.iter().map(|(_, n)| n).sum();
    let hit: u64 = folded
        .iter()
        .filter(|(f, _)| f.iter().skip(1).any(|x| x == name))
        .map(|(_, n)| n)
        .sum();
    100.0 * hit as f64 / all.max(1) as f64
}

/// Self-time shares by innermost frame, names normalized the way
/// `perf script` spells them (no `_[k]`, unresolved frames `[unknown]`).
fn self_shares(leaves: impl IntoIterator<Item = (String, u64)>) -> (HashMap<String, f64>, u64) {
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut all = 0;
    for (leaf, n) in leaves {
        let mut name = leaf.trim_end_matches("_[k]").to_string();
        if name.starts_with('[') {
            name = "[unknown]".into();
        }
        *counts.entry(name).or_default() += n;
        all += n;
    }
    let shares = counts
        .into_iter()
        .map(|(k, v)| (k, 100.0 * v as f64 / all.max(1) as f64))
        .collect();
    (shares, all)
}

fn top(shares: &HashMap<String, f64>, min_pct: f64) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = shares
        .iter()
        .filter(|(_, &p)| p >= min_pct)
        .map(|(k, &p)| (k.clone(), p))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

fn check_demo(name: &str, extra: &[&str]) -> std::process::Output {
    let dir = tmpdir(name);
    let mut args = vec!["demo", "-d", "2", "-F", "1999", "-o", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert!(out.status.success(), "demo failed");
    let folded = read_folded(&dir);
    let samples: u64 = folded.iter().map(|(_, n)| n).sum();
    assert!(samples >= 300, "only {samples} samples");
    for (name, want) in [
        ("kstackprof::demo::work_50pct", 50.0),
        ("kstackprof::demo::work_30pct", 30.0),
        ("kstackprof::demo::work_20pct", 20.0),
    ] {
        let got = total_share(&folded, name);
        eprintln!("{name}: designed {want:.1}%, measured {got:.1}% of {samples} samples");
        assert!(
            (got - want).abs() <= 5.0,
            "{name}: designed {want}%, measured {got:.1}%"
        );
    }
    // Frames are root first: the hot functions sit under the worker.
    assert!(folded.iter().any(|(f, _)| f
        .windows(2)
        .any(|w| w[0] == "kstackprof::demo::worker" && w[1] == "kstackprof::demo::work_50pct")));
    let svg = std::fs::read_to_string(dir.join("flamegraph.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("work_50pct"));
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// The demo in the depot (the default) and in the kernel-exact maps.
#[test]
fn demo_hot_functions_have_their_designed_shares() {
    let out = check_demo("demo", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stacks kept in a stack depot"), "{err}");
    let out = check_demo("demo-map", &["--kernel-map"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stacks kept in two kernel-exact stack maps"),
        "{err}"
    );
}

fn build_id_frames(out: &std::process::Output) -> u64 {
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("build-id frames stored:"))
        .expect("build-id summary line");
    line.split_whitespace()
        .skip_while(|w| *w != "stored:")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a count")
}

/// User frames stored as (build id, file offset) and symbolized offline:
/// `StackBuildId` frames in the depot, and in a `BPF_F_STACK_BUILD_ID` map.
#[test]
fn build_id_demo_symbolizes_offline() {
    let out = check_demo("demo-build-id", &["--build-id"]);
    assert!(
        build_id_frames(&out) > 0,
        "no VALID build-id frames in the depot"
    );
    let out = check_demo("demo-build-id-map", &["--build-id", "--kernel-map"]);
    assert!(
        build_id_frames(&out) > 0,
        "no VALID build-id frames in the map"
    );
}

/// The drop count of one run (`(N drops)` in the loss line).
fn drops(out: &std::process::Output) -> u64 {
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("sample loss:"))
        .expect("a loss line");
    line.rsplit_once('(')
        .and_then(|(_, r)| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no drop count in {line:?}"))
}

/// The depot keeps every stack a small kernel-exact map drops (8 buckets
/// for the C workload's dozens of stacks), and a depot too small for them
/// reports its drops as a share of the samples.
#[test]
fn depot_keeps_what_a_kernel_map_drops() {
    let dir = tmpdir("depot-drops");
    let Some(exe) = build_c(&dir, "accuracy") else {
        return;
    };
    let o = dir.join("out");
    let o = o.to_str().unwrap();
    let exe = exe.to_str().unwrap();
    let map = run(&[
        "record",
        "-F",
        "999",
        "--kernel-map",
        "-s",
        "8",
        "-o",
        o,
        exe,
        "4000",
    ]);
    assert!(map.status.success());
    assert!(drops(&map) > 0, "8 buckets should drop some of the stacks");
    let depot = run(&["record", "-F", "999", "-o", o, exe, "4000"]);
    assert!(depot.status.success());
    assert_eq!(drops(&depot), 0, "the depot drops nothing when it has room");
    let tiny = run(&[
        "record",
        "-F",
        "999",
        "--depot-capacity",
        "2",
        "-o",
        o,
        exe,
        "4000",
    ]);
    assert!(tiny.status.success());
    assert!(drops(&tiny) > 0);
    let err = String::from_utf8_lossy(&tiny.stderr);
    assert!(
        err.contains("% of samples) could not be stored") && err.contains("--depot-capacity"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Perl loop (perl exports its interpreter symbols, so both profilers
/// can name the hot functions), profiled by kstackprof and, in the same
/// run, by `perf record -g` wrapped around it.
#[test]
fn real_program_matches_perf_record() {
    if Command::new("perl").arg("-e1").status().is_err() {
        println!("SKIPPED: perl is not installed; no real program to profile");
        return;
    }
    let dir = tmpdir("perl");
    let out_dir = dir.join("out");
    let data = dir.join("perf.data");
    let script = "my $s = 0; for my $i (1 .. 40_000_000) { $s += ($i * $i) % 7 } print \"$s\\n\";";
    let ours = [
        BIN,
        "record",
        "-F",
        "999",
        "-o",
        out_dir.to_str().unwrap(),
        "--",
        "perl",
        "-e",
        script,
    ];
    let perf_ok = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-F", "999", "-g", "-o"])
        .arg(&data)
        .arg("--")
        .args(ours)
        .status()
        .is_ok_and(|s| s.success());
    if !perf_ok {
        println!("SKIPPED: perf record could not run here; checking kstackprof alone");
        let st = Command::new(BIN).args(&ours[1..]).status().unwrap();
        assert!(st.success());
    }
    let folded = read_folded(&out_dir);
    let (mine, my_n) = self_shares(
        folded
            .iter()
            .filter(|(f, _)| f[0] == "perl")
            .map(|(f, n)| (f.last().unwrap().clone(), *n)),
    );
    let my_top = top(&mine, 5.0);
    eprintln!("kstackprof ({my_n} perl samples): {my_top:?}");
    assert!(my_n >= 200, "only {my_n} samples");
    assert!(
        my_top.first().is_some_and(|(n, _)| n.starts_with("Perl_")),
        "the top function should be perl's own: {my_top:?}"
    );
    if !perf_ok {
        return;
    }

    let script_out = Command::new("perf")
        .args(["script", "-F", "comm,tid,ip,sym", "--comms", "perl", "-i"])
        .arg(&data)
        .output();
    let Some(script_out) = script_out.ok().filter(|o| o.status.success()) else {
        println!("SKIPPED: perf script could not read {}", data.display());
        return;
    };
    let text = String::from_utf8_lossy(&script_out.stdout);
    let mut leaves = Vec::new();
    let mut want_leaf = false;
    for line in text.lines() {
        if line.trim().is_empty() {
            want_leaf = false;
        } else if !line.starts_with(char::is_whitespace) {
            want_leaf = true; // a sample header: "perl  1234"
        } else if want_leaf {
            let sym = line
                .trim()
                .split_once(char::is_whitespace)
                .map_or("", |(_, s)| s);
            let sym = sym.split(" (").next().unwrap_or(sym).trim();
            leaves.push((sym.to_string(), 1u64));
            want_leaf = false;
        }
    }
    let (theirs, their_n) = self_shares(leaves);
    let their_top = top(&theirs, 5.0);
    eprintln!("perf ({their_n} perl samples): {their_top:?}");
    assert!(their_n >= 200, "perf saw only {their_n} samples");
    for (name, pct) in their_top.iter().chain(my_top.iter()) {
        let a = mine.get(name).copied().unwrap_or(0.0);
        let b = theirs.get(name).copied().unwrap_or(0.0);
        assert!(
            (a - b).abs() <= 5.0,
            "{name} ({pct:.1}%): kstackprof {a:.1}% vs perf {b:.1}%"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn errors_are_one_line_and_actionable() {
    let dir = tmpdir("errors");
    let o = dir.to_str().unwrap();
    assert_one_line_error(
        &run(&["record", "-o", o, "-p", "999999999"]),
        "no such process: 999999999",
    );
    assert_one_line_error(
        &run(&["record", "-o", o, "--", "kstackprof-no-such-command"]),
        "command not found: kstackprof-no-such-command",
    );
    assert_one_line_error(
        &run(&["record", "-o", "/proc/kstackprof-test", "--", "true"]),
        "not writable",
    );
    assert_one_line_error(
        &run(&["record", "-o", o, "-F", "0", "--", "true"]),
        "at least 1 Hz",
    );
    // Without privileges: run as nobody, when we can drop to it.
    if Command::new("setpriv").arg("--version").output().is_ok()
        && unsafe_is_root()
        && std::fs::metadata(BIN).is_ok()
    {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                BIN,
                "record",
            ])
            .args(["-o", "/tmp", "-d", "1"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("Permission denied") && !err.contains("perf") {
            println!("SKIPPED: nobody cannot execute {BIN}: {err}");
        } else {
            assert_one_line_error(&out, "perf_event_paranoid");
            assert!(err.contains("CAP_PERFMON"), "{err}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `-p PID`: per-thread events, user frames symbolized from the running
/// process's `/proc/PID/maps`.
#[test]
fn attach_to_a_running_process() {
    let Ok(mut child) = Command::new("perl")
        .args(["-e", "my $s = 0; while (1) { $s += ($s * 3) % 7 }"])
        .spawn()
    else {
        println!("SKIPPED: perl is not installed; nothing to attach to");
        return;
    };
    let dir = tmpdir("attach");
    let pid = child.id().to_string();
    let out = run(&[
        "record",
        "-p",
        &pid,
        "-d",
        "1",
        "-F",
        "499",
        "-o",
        dir.to_str().unwrap(),
    ]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.status.success());
    let folded = read_folded(&dir);
    assert!(!folded.is_empty(), "no samples of pid {pid}");
    assert!(
        folded.iter().all(|(f, _)| f[0] == "perl"),
        "only the target's samples"
    );
    let (shares, n) = self_shares(folded.iter().map(|(f, n)| (f.last().unwrap().clone(), *n)));
    let perl: f64 = shares
        .iter()
        .filter(|(k, _)| k.starts_with("Perl_"))
        .map(|(_, p)| p)
        .sum();
    assert!(
        perl > 50.0,
        "perl's own functions should dominate ({n} samples): {shares:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// JIT code: a function in anonymous executable memory, named only by the
/// program's `/tmp/perf-PID.map` (tests/jit.c).
#[test]
fn jit_code_is_named_from_the_perf_map() {
    let dir = tmpdir("jit");
    let Some(exe) = build_c(&dir, "jit") else {
        return;
    };
    let out_dir = dir.join("out");
    let out = run(&[
        "record",
        "-F",
        "499",
        "--per-process",
        "-o",
        out_dir.to_str().unwrap(),
        exe.to_str().unwrap(),
        "600000000",
    ]);
    assert!(out.status.success());
    let folded = read_folded(&out_dir);
    if let Some(pid) = folded[0].0[0]
        .rsplit_once("(pid ")
        .and_then(|(_, r)| r.trim_end_matches(')').parse::<u32>().ok())
    {
        let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
    }
    let all: u64 = folded.iter().map(|(_, n)| n).sum();
    let jit: u64 = folded
        .iter()
        .filter(|(f, _)| f.last().is_some_and(|l| l == "jitted_counting_loop"))
        .map(|(_, n)| n)
        .sum();
    assert!(all >= 50, "only {all} samples");
    assert!(
        jit * 10 >= all * 8,
        "the JIT loop should be named and hold most samples: {jit} of {all}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

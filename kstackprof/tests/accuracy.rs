//! Accuracy: a C program with frame pointers and designed shares
//! (tests/accuracy.c: self 40/30/20/10 % in fn_a..fn_d, fn_c reached
//! through two call paths of 10 % each), profiled by kstackprof and, in the
//! same run, by `perf record -g` wrapped around it. The top-10 self and
//! total shares must agree within 2 points with each other and with the
//! design.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::*;

/// Designed self shares.
const SELF: [(&str, f64); 4] = [
    ("fn_a", 40.0),
    ("fn_b", 30.0),
    ("fn_c", 20.0),
    ("fn_d", 10.0),
];
/// Designed total shares.
const TOTAL: [(&str, f64); 7] = [
    ("main", 100.0),
    ("fn_a", 40.0),
    ("fn_b", 30.0),
    ("fn_c", 20.0),
    ("fn_d", 10.0),
    ("path_one", 10.0),
    ("path_two", 10.0),
];
const POINTS: f64 = 2.0;

fn get(m: &HashMap<String, f64>, k: &str) -> f64 {
    m.get(k).copied().unwrap_or(0.0)
}

fn print_table(what: &str, ours: &HashMap<String, f64>, perf: Option<&HashMap<String, f64>>) {
    eprintln!("{what}: function, design, kstackprof, perf record -g");
    let mut names: Vec<String> = top(ours, 10).into_iter().map(|(n, _)| n).collect();
    if let Some(p) = perf {
        names.extend(top(p, 10).into_iter().map(|(n, _)| n));
    }
    names.sort();
    names.dedup();
    for n in names {
        let design = SELF
            .iter()
            .chain(TOTAL.iter())
            .find(|(f, _)| *f == n)
            .map_or(String::from("-"), |(_, d)| format!("{d:.1}"));
        eprintln!(
            "  {n:<28} {design:>6} {:>6.2} {:>6}",
            get(ours, &n),
            perf.map_or(String::from("-"), |p| format!("{:.2}", get(p, &n)))
        );
    }
}

/// Both profilers' top 10 (by share) agree within 2 points, and every
/// designed share is met within 2 points.
fn check(
    what: &str,
    design: &[(&str, f64)],
    ours: &HashMap<String, f64>,
    perf: Option<&HashMap<String, f64>>,
) {
    print_table(what, ours, perf);
    for (f, want) in design {
        let got = get(ours, f);
        assert!(
            (got - want).abs() <= POINTS,
            "{what} {f}: designed {want}%, kstackprof {got:.2}%"
        );
        if let Some(p) = perf {
            let theirs = get(p, f);
            assert!(
                (theirs - want).abs() <= POINTS,
                "{what} {f}: designed {want}%, perf {theirs:.2}%"
            );
        }
    }
    if let Some(p) = perf {
        for (f, _) in top(ours, 10).into_iter().chain(top(p, 10)) {
            let (a, b) = (get(ours, &f), get(p, &f));
            assert!(
                (a - b).abs() <= POINTS,
                "{what} {f}: kstackprof {a:.2}% vs perf {b:.2}%"
            );
        }
    }
}

#[test]
fn designed_shares_match_perf_record_and_the_design() {
    let dir = tmpdir("accuracy");
    let Some(exe) = build_accuracy(&dir) else {
        return;
    };
    let out_dir = dir.join("out");
    let data = dir.join("perf.data");
    let ours = [
        BIN,
        "record",
        "-F",
        "4999",
        "-o",
        out_dir.to_str().unwrap(),
        "--",
        exe.to_str().unwrap(),
        "40000",
    ];
    let perf_run = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-F", "4999", "-g", "-o"])
        .arg(&data)
        .arg("--")
        .args(ours)
        .output();
    let perf_ok = match &perf_run {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            println!(
                "SKIPPED (perf half only): perf record failed here: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            println!("SKIPPED (perf half only): perf is not installed: {e}");
            false
        }
    };
    if !perf_ok {
        let out = run(&ours[1..]);
        assert!(out.status.success());
    } else if let Ok(o) = &perf_run {
        eprintln!("{}", String::from_utf8_lossy(&o.stderr));
    }
    let folded = read_folded(&out_dir);
    let mine: Vec<(Vec<String>, u64)> = folded
        .into_iter()
        .filter(|(f, _)| f[0] == "ksp-accuracy")
        .collect();
    let (my_self, my_total, my_n) = shares(mine.iter().map(|(f, n)| (f.as_slice(), *n)), 1);
    eprintln!("kstackprof: {my_n} samples of ksp-accuracy");
    assert!(my_n >= 5000, "only {my_n} samples");

    let perf = if perf_ok {
        let stacks = perf_stacks(&data, "ksp-accuracy").expect("perf script");
        let (s, t, n) = shares(stacks.iter().map(|(f, n)| (f.as_slice(), *n)), 0);
        eprintln!("perf record -g: {n} samples of ksp-accuracy");
        assert!(n >= 5000, "perf saw only {n} samples");
        Some((s, t))
    } else {
        None
    };
    check("self", &SELF, &my_self, perf.as_ref().map(|p| &p.0));
    check("total", &TOTAL, &my_total, perf.as_ref().map(|p| &p.1));
    let _ = std::fs::remove_dir_all(&dir);
}

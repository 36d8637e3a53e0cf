//! `profile.pb.gz`: decoded here with prost (the same `profile.proto`
//! messages kstackprof encodes with) and checked against the folded stacks,
//! and read by `go tool pprof -top`, whose top functions must be
//! kstackprof's own table.

mod common;

#[path = "../src/pprof/proto.rs"]
mod proto;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use common::*;
use prost::Message;

fn decode(dir: &Path) -> proto::Profile {
    let gz = std::fs::read(dir.join("profile.pb.gz")).expect("profile.pb.gz");
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_end(&mut bytes)
        .expect("gzip");
    proto::Profile::decode(bytes.as_slice()).expect("profile.proto")
}

/// kstackprof's printed table: (name, self %, total %), in its order.
fn own_table(stdout: &str) -> Vec<(String, f64, f64)> {
    stdout
        .lines()
        .skip_while(|l| !l.contains("FUNCTION"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let s = f.next()?.trim_end_matches('%').parse().ok()?;
            let t = f.next()?.trim_end_matches('%').parse().ok()?;
            let name = f.collect::<Vec<_>>().join(" ");
            Some((name, s, t))
        })
        .collect()
}

/// `go tool pprof -top` rows: name -> (flat %, cum %), or None when go is
/// not there.
fn pprof_top(file: &Path) -> Option<HashMap<String, (f64, f64)>> {
    let out = match Command::new("go")
        .args([
            "tool",
            "pprof",
            "-top",
            "-sample_index=samples",
            "-nodefraction=0",
            "-nodecount=100000",
        ])
        .arg(file)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            println!(
                "SKIPPED (go tool pprof half): go is not installed ({e}); \
                 apt-get install golang-go"
            );
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "$ go tool pprof -top ...\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "go tool pprof failed");
    let pct = |s: &str| s.trim_end_matches('%').parse::<f64>().ok();
    Some(
        text.lines()
            .skip_while(|l| !l.trim_start().starts_with("flat"))
            .skip(1)
            .filter_map(|l| {
                // flat flat% sum% cum cum% name...
                let f: Vec<&str> = l.split_whitespace().collect();
                let name = f.get(5..)?.join(" ");
                let name = name.trim_end_matches(" (inline)").to_string();
                Some((name, (pct(f.get(1)?)?, pct(f.get(4)?)?)))
            })
            .collect(),
    )
}

#[test]
fn profile_pb_gz_holds_the_recording_and_pprof_agrees_with_the_table() {
    let dir = tmpdir("pprof");
    let Some(exe) = build_accuracy(&dir) else {
        return;
    };
    let out_dir = dir.join("out");
    let out = run(&[
        "record",
        "-F",
        "999",
        "--per-process",
        "-o",
        out_dir.to_str().unwrap(),
        exe.to_str().unwrap(),
        "8000",
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let folded = read_folded(&out_dir);
    let samples: u64 = folded.iter().map(|(_, n)| n).sum();
    assert!(samples >= 200, "only {samples} samples");

    let p = decode(&out_dir);
    let s = |i: i64| p.string_table[i as usize].as_str();
    assert_eq!(s(0), "");
    let types: Vec<(&str, &str)> = p
        .sample_type
        .iter()
        .map(|t| (s(t.r#type), s(t.unit)))
        .collect();
    assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
    assert_eq!(p.period, 1_000_000_000 / 999);
    let pt = p.period_type.as_ref().unwrap();
    assert_eq!((s(pt.r#type), s(pt.unit)), ("cpu", "nanoseconds"));
    assert!(p.duration_nanos > 0 && p.time_nanos > 1_600_000_000_000_000_000);

    // Every sample's count is there, and cpu = count x period.
    let total: i64 = p.sample.iter().map(|x| x.value[0]).sum();
    assert_eq!(total as u64, samples);
    assert!(p.sample.iter().all(|x| x.value[1] == x.value[0] * p.period));

    // pid/tid labels, the pid the folded root names.
    let pid_in_root: u32 = folded[0].0[0]
        .rsplit_once("(pid ")
        .and_then(|(_, r)| r.trim_end_matches(')').parse().ok())
        .expect("--per-process root frame");
    for x in &p.sample {
        let label = |k: &str| x.label.iter().find(|l| s(l.key) == k);
        assert_eq!(label("pid").map(|l| l.num), Some(i64::from(pid_in_root)));
        assert!(label("tid").is_some_and(|l| l.num > 0));
        assert_eq!(label("process").map(|l| s(l.str)), Some("ksp-accuracy"));
    }

    // The program's mapping, with its build id; its functions, at their
    // file offsets.
    let mapping = p
        .mapping
        .iter()
        .find(|m| s(m.filename) == exe.to_str().unwrap())
        .expect("a mapping for the program");
    let want = kstackmap::parse_build_id(&std::fs::read(&exe).unwrap()).map(|b| b.to_string());
    assert_eq!(Some(s(mapping.build_id).to_string()), want);
    assert!(mapping.has_functions && mapping.has_line_numbers);
    let func = |name: &str| {
        p.function
            .iter()
            .find(|f| s(f.name) == name)
            .unwrap_or_else(|| panic!("function {name}"))
    };
    for name in [
        "main", "fn_a", "fn_b", "fn_c", "fn_d", "path_one", "path_two",
    ] {
        let f = func(name);
        assert!(
            s(f.filename).ends_with("accuracy.c"),
            "{name}: {}",
            s(f.filename)
        );
        let loc = p
            .location
            .iter()
            .find(|l| l.line.iter().any(|ln| ln.function_id == f.id))
            .unwrap_or_else(|| panic!("a location in {name}"));
        assert_eq!(loc.mapping_id, mapping.id);
        assert!(
            loc.line.iter().all(|ln| ln.line > 0),
            "{name} has line numbers"
        );
    }
    // Leaf first: fn_c's samples go through path_one or path_two, then main.
    // A frame-pointer unwind that lands on fn_c's first instruction (before
    // `push rbp`) or its last (after `pop rbp`) reads the caller's frame as
    // fn_c's and so skips path_X: `perf record -g` shows the same. Those
    // samples must still reach main directly, and be rare (a few
    // instructions out of a loop of thousands of cycles).
    let fname = |loc_id: u64| {
        let loc = &p.location[(loc_id - 1) as usize];
        s(p.function[(loc.line.last().unwrap().function_id - 1) as usize].name)
    };
    let through_c: Vec<(Vec<&str>, i64)> = p
        .sample
        .iter()
        .map(|x| {
            let names = x.location_id.iter().map(|&l| fname(l)).collect::<Vec<_>>();
            (names, x.value[0])
        })
        .filter(|(names, _)| names.first() == Some(&"fn_c"))
        .collect();
    assert!(!through_c.is_empty());
    let (mut whole, mut skipped) = (0, 0);
    for (names, n) in &through_c {
        if names.get(1..3) == Some(&["path_one", "main"][..])
            || names.get(1..3) == Some(&["path_two", "main"][..])
        {
            whole += n;
        } else {
            assert_eq!(names.get(1), Some(&"main"), "{names:?}");
            skipped += n;
        }
    }
    assert!(
        skipped * 20 <= whole + skipped,
        "{skipped} of {} fn_c samples skip their caller",
        whole + skipped
    );
    // Kernel frames, when there are some, are in [kernel.kallsyms].
    if folded
        .iter()
        .any(|(f, _)| f.iter().any(|x| x.ends_with("_[k]")))
    {
        assert!(p
            .mapping
            .iter()
            .any(|m| s(m.filename) == "[kernel.kallsyms]"));
    }

    // go tool pprof -top lists what the table lists.
    let table = own_table(&stdout);
    assert!(table.len() >= 4, "{table:?}");
    if let Some(pprof) = pprof_top(&out_dir.join("profile.pb.gz")) {
        for (name, slf, tot) in table.iter().take(10) {
            let plain = name.trim_end_matches("_[k]");
            let (flat, cum) = pprof
                .get(plain)
                .copied()
                .unwrap_or_else(|| panic!("{plain} is not in pprof's top: {pprof:?}"));
            assert!(
                (flat - slf).abs() < 0.02 && (cum - tot).abs() < 0.02,
                "{plain}: table {slf}% / {tot}%, pprof {flat}% / {cum}%"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

//! `record` as a person uses it: exit status, `-d` on a launched command,
//! a command without `--`, and argument errors caught before the disk is
//! touched.

mod common;

use std::process::Command;

use common::*;

#[test]
fn exit_status_is_the_commands() {
    let dir = tmpdir("exit");
    let o = dir.join("out");
    let o = o.to_str().unwrap();
    let out = run(&["record", "-o", o, "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    // Without `--`, and a signal: 128 + SIGUSR1 (10), as a shell says.
    let out = run(&["record", "-o", o, "sh", "-c", "kill -USR1 $$"]);
    assert_eq!(out.status.code(), Some(128 + 10));
    let out = run(&["record", "-o", o, "true"]);
    assert_eq!(out.status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_command_takes_options_after_its_name_without_dashes() {
    let dir = tmpdir("no-dashes");
    let o = dir.join("out");
    // `-c` and `exit 5` belong to sh, not to kstackprof.
    let out = run(&[
        "record",
        "-F",
        "199",
        "-o",
        o.to_str().unwrap(),
        "sh",
        "-c",
        "exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5));
    assert!(o.join("stacks.folded").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `-d` ends the command's whole process group, and what left the group:
/// nothing is left running, the rest of the script never runs, and
/// kstackprof says what it did.
#[test]
fn deadline_stops_the_whole_process_group() {
    let dir = tmpdir("deadline");
    let o = dir.join("out");
    let marker = dir.join("done");
    // Unique sleep lengths, to find leftovers by their command line.
    let script = format!(
        "setsid sleep 31.4159 & sleep 27.1828; echo done > {}",
        marker.display()
    );
    let out = run(&[
        "record",
        "-d",
        "1",
        "-o",
        o.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(out.status.code(), Some(0), "stopped at -d: exit 0");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stopped the command"), "{err}");
    // Both sleeps got the signal (the setsid one as an orphan that came
    // back to kstackprof); let the kernel finish tearing them down.
    let mut left = Vec::new();
    for _ in 0..50 {
        left = processes_with("sleep 31.4159");
        left.extend(processes_with("sleep 27.1828"));
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(left.is_empty(), "left running: {left:?}");
    assert!(!marker.exists(), "the script went on after -d");

    // A group that ignores SIGTERM gets SIGKILL after the grace period.
    let out = run(&[
        "record",
        "-d",
        "1",
        "-o",
        o.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "trap '' TERM; sleep 27.1829",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("then SIGKILL"), "{err}");
    assert!(processes_with("sleep 27.1829").is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bad values say what is wrong, in one line, and nothing is created.
#[test]
fn bad_arguments_are_one_line_and_touch_nothing() {
    let dir = tmpdir("bad-args");
    let out_dir = dir.join("never-created");
    let o = out_dir.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["-d", "-1", "--", "true"],
            "the duration must be a positive number of seconds",
        ),
        (&["-d", "0", "true"], "positive number of seconds"),
        (&["-d", "soon", "true"], "positive number of seconds"),
        (&["-s", "0", "--", "true"], "at least 1 entry"),
        (
            &["--depot-capacity", "0", "true"],
            "the depot's capacity is a whole number",
        ),
        (
            &["--depot-arena-mib", "-3", "true"],
            "the depot's arena is a whole number of MiB",
        ),
        (
            &["--kernel-map", "--depot-capacity", "9", "true"],
            "cannot be used with",
        ),
        (&["-F", "0", "--", "true"], "at least 1 Hz"),
        (&["-F", "-5", "--", "true"], "whole number of Hz"),
        (
            &["-F", "99999999", "--", "true"],
            "perf_event_max_sample_rate",
        ),
        (&["-p", "0"], "a process id is a positive whole number"),
        (&["-p", "x"], "a process id is a positive whole number"),
        (&["-p", "999999999"], "no such process: 999999999"),
        (
            &["--", "kstackprof-no-such-command"],
            "command not found: kstackprof-no-such-command",
        ),
        (&["kstackprof-no-such-command"], "command not found"),
        (&["-p", "1", "--", "true"], "cannot be used with"),
    ];
    for (args, needle) in cases {
        let mut all = vec!["record", "-o", o];
        all.extend_from_slice(args);
        let out = run(&all);
        assert_one_line_error(&out, needle);
        assert!(!out_dir.exists(), "{args:?} created {o}");
    }
    // The same from the current directory: no ./kstackprof-out.
    let out = Command::new(BIN)
        .args(["record", "-s", "0", "--", "true"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!dir.join("kstackprof-out").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn summary_gives_loss_as_shares_and_distinct_stacks_as_pairs() {
    let dir = tmpdir("summary");
    let o = dir.join("out");
    let out = run(&[
        "record",
        "-F",
        "499",
        "-o",
        o.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done",
    ]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let loss = err
        .lines()
        .find(|l| l.contains("sample loss:"))
        .expect("a loss line");
    assert!(
        loss.contains("% lost in the kernel") && loss.contains("% of samples"),
        "{loss}"
    );
    // Distinct stacks: (kernel, user) pairs, never more than the samples.
    let line = err
        .lines()
        .find(|l| l.contains("distinct stacks"))
        .expect("summary");
    let words: Vec<&str> = line.split_whitespace().collect();
    let num_before = |w: &str| -> u64 {
        let i = words.iter().position(|x| x.starts_with(w)).unwrap();
        words[i - 1].trim_end_matches(',').parse().unwrap()
    };
    let (samples, stacks) = (num_before("samples"), num_before("distinct"));
    assert!(samples > 0 && stacks <= samples, "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

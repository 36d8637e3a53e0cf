//! `-p PID`: per-thread events that follow threads started after attaching,
//! and what an unprivileged user gets at `perf_event_paranoid` 1 and 2
//! (set here for the test, as root, and restored after).

mod common;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// A process that spins in its main thread and, `delay` seconds after it
/// starts, in a second thread too. Python: its threads are OS threads
/// (they take turns on the GIL, both are sampled). The interpreter itself
/// is started, not `python3` from PATH: that may be a wrapper script
/// (pyenv's shim is a bash script whose process is named `python3` before
/// it execs `pyenv`, bash again, and at last the interpreter), and an
/// attach during the wrapper samples bash.
fn python_spinner(delay: f64) -> Option<Child> {
    let script = format!(
        "import threading, time\n\
         def spin():\n    x = 0\n    while True: x += 1\n\
         time.sleep({delay})\n\
         threading.Thread(target=spin, daemon=True).start()\n\
         spin()\n"
    );
    let python = match Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
    {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => panic!("python3 -c 'print(sys.executable)' failed: {o:?}"),
        Err(e) => {
            println!("SKIPPED: python3 is not installed ({e}); nothing to attach to");
            return None;
        }
    };
    Some(
        Command::new(&python)
            .args(["-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{python}: {e}")),
    )
}

/// Thread ids named in `--per-thread` root frames ("name (tid N)").
fn tids(folded: &[(Vec<String>, u64)]) -> HashSet<u32> {
    folded
        .iter()
        .filter_map(|(f, _)| {
            f.get(1)?
                .rsplit_once("(tid ")
                .and_then(|(_, r)| r.trim_end_matches(')').parse().ok())
        })
        .collect()
}

#[test]
fn threads_started_after_attaching_are_sampled() {
    let Some(mut child) = python_spinner(0.8) else {
        return;
    };
    let pid = child.id();
    // Attach once the interpreter has loaded (its comm is set at exec;
    // the second thread starts `delay` later).
    for _ in 0..200 {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim().starts_with("python") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let dir = tmpdir("late-thread");
    let out = run(&[
        "record",
        "-p",
        &pid.to_string(),
        "-d",
        "2.5",
        "-F",
        "499",
        "--per-thread",
        "-o",
        dir.to_str().unwrap(),
    ]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.status.success());
    let folded = read_folded(&dir);
    assert!(
        folded
            .iter()
            .all(|(f, _)| f[0].starts_with("python") && f[0].ends_with(&format!(" (pid {pid})"))),
        "only the target, rooted at its process"
    );
    let seen = tids(&folded);
    assert!(seen.contains(&pid), "the main thread: {seen:?}");
    assert!(
        seen.iter().any(|&t| t != pid),
        "the thread started after attaching was not sampled: {seen:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sets `kernel.perf_event_paranoid` and puts the old value back when
/// dropped (also when the test fails).
struct Paranoid(String);

impl Paranoid {
    const PATH: &'static str = "/proc/sys/kernel/perf_event_paranoid";

    fn set(level: i32) -> Option<Paranoid> {
        let old = std::fs::read_to_string(Self::PATH).ok()?;
        std::fs::write(Self::PATH, level.to_string()).ok()?;
        Some(Paranoid(old))
    }
}

impl Drop for Paranoid {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, self.0.trim());
    }
}

const NOBODY: u32 = 65534;

/// kstackprof run as nobody.
fn run_as_nobody(bin: &Path, args: &[&str]) -> Output {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
        ])
        .arg(bin)
        .args(args)
        .output()
        .expect("setpriv");
    eprintln!(
        "$ (nobody) kstackprof {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn kernel_frames(folded: &[(Vec<String>, u64)]) -> u64 {
    folded
        .iter()
        .filter(|(f, _)| f.iter().any(|x| x.ends_with("_[k]")))
        .map(|(_, n)| n)
        .sum()
}

/// At paranoid 1 an unprivileged user profiles its own process (-p) and
/// commands with kernel frames, but not the whole system; at 2, -p and
/// commands fall back to user space with a one-line note.
#[test]
fn unprivileged_user_at_paranoid_1_and_2() {
    if !is_root() {
        println!("SKIPPED: needs root to set perf_event_paranoid and to run as nobody");
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        println!("SKIPPED: setpriv is not installed");
        return;
    }
    // A copy nobody can run, and an output directory nobody can write.
    let dir = tmpdir("paranoid");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let bin = dir.join("kstackprof");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    if !Path::new(Paranoid::PATH).exists() {
        println!("SKIPPED: no {}", Paranoid::PATH);
        return;
    }
    let busy = "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done";
    for level in [1, 2] {
        let Some(_guard) = Paranoid::set(level) else {
            println!("SKIPPED: cannot write {}", Paranoid::PATH);
            return;
        };
        // A busy loop of nobody's own.
        let mut target = Command::new("setpriv")
            .args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
                "/bin/sh",
                "-c",
                "while :; do :; done",
            ])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let pid = target.id().to_string();
        let out_p = dir.join(format!("p{level}"));
        let out = run_as_nobody(
            &bin,
            &[
                "record",
                "-p",
                &pid,
                "-d",
                "1",
                "-F",
                "499",
                "-o",
                out_p.to_str().unwrap(),
            ],
        );
        let _ = target.kill();
        let _ = target.wait();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "-p at paranoid {level}: {err}");
        let folded = read_folded(&out_p);
        assert!(!folded.is_empty(), "-p at paranoid {level}: no samples");
        let note = err.contains("sampling user space only");
        assert_eq!(
            note,
            level == 2,
            "the user-only note at paranoid {level}: {err}"
        );

        let out_c = dir.join(format!("c{level}"));
        let out = run_as_nobody(
            &bin,
            &[
                "record",
                "-F",
                "499",
                "-o",
                out_c.to_str().unwrap(),
                "sh",
                "-c",
                busy,
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "a command at paranoid {level}: {err}");
        assert_eq!(
            err.contains("sampling user space only"),
            level == 2,
            "{err}"
        );
        let folded = read_folded(&out_c);
        assert!(!folded.is_empty());
        if level == 2 {
            assert_eq!(kernel_frames(&folded), 0, "user space only at 2");
        }

        let out = run_as_nobody(&bin, &["record", "-d", "1", "-o", dir.to_str().unwrap()]);
        assert_one_line_error(&out, "perf_event_paranoid");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

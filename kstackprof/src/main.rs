//! kstackprof: a sampling profiler whose stacks live in a kstackmap
//! `StackDepot` (or, with `--kernel-map`, in two kernel-exact `StackMap`s,
//! the way BCC's `profile` keeps them in BPF stack trace maps).
//!
//! `perf_event_open` cpu-clock samples (kernel + user callchains) are read
//! from per-CPU mmap rings; each sample's kernel and user parts are stored
//! (`store`); after recording every stack is read back once, symbolized
//! (blazesym), and written as folded stacks, a flame graph (inferno), a
//! pprof profile and a top-N table.

mod buildid;
mod child;
mod demo;
mod maps;
mod output;
mod perf;
mod perfmap;
mod pprof;
mod record;
mod store;
mod symbolize;
mod vdso;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

use output::Root;
use record::{Options, StoreKind, Target};

const RECORD_AFTER_HELP: &str = "\
Targets: a command (with or without `--` before it), -p PID, or the whole
system when neither is given.

A launched command runs in a process group of its own (with the terminal,
when kstackprof has it, so Ctrl-C and Ctrl-Z reach it as in a shell). At the
-d deadline, or when kstackprof gets SIGINT/SIGTERM, the whole group gets
SIGTERM, then SIGKILL 2 s later if anything is left; processes that left the
group (setsid) are caught as orphans and get the same. When the command ends
by itself, recording stops and what it left in the background is not
touched. kstackprof exits with the command's status (128+N when signal N
ended it, as a shell reports it), or 0 when kstackprof stopped it (-d, or
SIGINT/SIGTERM sent to kstackprof).

-p PID samples every thread of the process, also threads it starts later,
with per-thread events (perf_event_paranoid 1 is enough for your own
processes). At perf_event_paranoid 2 (without root or CAP_PERFMON) commands
and -p are sampled in user space only, with a note. The whole system needs
perf_event_paranoid 0, root or CAP_PERFMON.

Writes DIR/stacks.folded, DIR/flamegraph.svg and DIR/profile.pb.gz (pprof:
`go tool pprof -top DIR/profile.pb.gz`), and prints the top functions.";

#[derive(Parser, Debug)]
#[command(
    name = "kstackprof",
    version,
    about = "Sampling profiler (perf_event_open cpu-clock) with stacks kept in a kstackmap StackDepot (or, --kernel-map, the kernel-exact StackMap)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Profile a command, a process (-p) or the whole system.
    #[command(after_help = RECORD_AFTER_HELP)]
    Record(RecordArgs),
    /// Profile a built-in workload with known hot spots (50/30/20 %).
    Demo(DemoArgs),
    /// The demo's workload itself (run by `demo`).
    #[command(hide = true)]
    DemoWorker {
        /// Seconds to run.
        seconds: f64,
    },
}

fn parse_freq(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("the sampling frequency must be at least 1 Hz".into()),
        Ok(f) => Ok(f),
        Err(_) => Err(format!(
            "the sampling frequency must be a whole number of Hz (at least 1), not {s:?}"
        )),
    }
}

fn parse_duration(s: &str) -> Result<f64, String> {
    let bad = || format!("the duration must be a positive number of seconds, not {s:?}");
    let secs: f64 = s.parse().map_err(|_| bad())?;
    if !secs.is_finite() || secs <= 0.0 || Duration::try_from_secs_f64(secs).is_err() {
        return Err(bad());
    }
    Ok(secs)
}

fn parse_entries(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("the stack map needs at least 1 entry".into()),
        Ok(n) if n > 1 << 31 => Err(format!("at most 2^31 entries, not {n}")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "the number of entries must be a whole number from 1 to 2^31, not {s:?}"
        )),
    }
}

fn parse_capacity(s: &str) -> Result<u32, String> {
    let max = kstackmap::MAX_CAPACITY;
    match s.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "the depot's capacity is a whole number of stacks from 1 to {max}, not {s:?}"
        )),
    }
}

fn parse_mib(s: &str) -> Result<usize, String> {
    let max = (kstackmap::MAX_ARENA_WORDS * 8) >> 20;
    match s.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "the depot's arena is a whole number of MiB from 1 to {max}, not {s:?}"
        )),
    }
}

fn parse_pid(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(p) if p > 0 && p <= i32::MAX as u32 => Ok(p),
        _ => Err(format!(
            "a process id is a positive whole number, not {s:?}"
        )),
    }
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Output directory for stacks.folded, flamegraph.svg and profile.pb.gz.
    #[arg(
        short = 'o',
        long = "output",
        default_value = "kstackprof-out",
        value_name = "DIR"
    )]
    out: PathBuf,
    /// Keep stacks in two kernel-exact stack maps (kernel part, user part), as BCC's
    /// `profile` does, instead of the depot: stacks that hash to a taken bucket are dropped.
    #[arg(long)]
    kernel_map: bool,
    /// Entries in each stack map with --kernel-map; raise it when stacks are dropped.
    #[arg(short = 's', long = "stack-storage-size", default_value_t = 16384, value_name = "ENTRIES",
          value_parser = parse_entries, allow_negative_numbers = true)]
    storage_size: u32,
    /// Most distinct stacks the depot keeps (default: 2 x HZ x SECONDS x CPUs, SECONDS 60
    /// without -d, from 65,536 to 4,194,304).
    #[arg(long, value_name = "STACKS", value_parser = parse_capacity, conflicts_with = "kernel_map")]
    depot_capacity: Option<u32>,
    /// Size of the depot's frame arena in MiB (default: 128 bytes a stack, 320 with
    /// --build-id; touched only as it fills).
    #[arg(long, value_name = "MIB", value_parser = parse_mib, conflicts_with = "kernel_map")]
    depot_arena_mib: Option<usize>,
    /// Rows in the top-functions table.
    #[arg(long, default_value_t = 15, value_name = "N")]
    top: usize,
    /// Root frame of each stack: the thread, under its process ("name (pid N);name (tid M)").
    #[arg(long, conflicts_with = "per_process")]
    per_thread: bool,
    /// Root frame of each stack: the process ("name (pid N)"); default: the thread's name.
    #[arg(long)]
    per_process: bool,
}

impl Common {
    fn store(&self) -> StoreKind {
        if self.kernel_map {
            StoreKind::KernelMap {
                entries: self.storage_size,
            }
        } else {
            StoreKind::Depot {
                capacity: self.depot_capacity,
                arena_words: self.depot_arena_mib.map(|m| (m << 20) / 8),
            }
        }
    }

    fn root(&self) -> Root {
        match (self.per_thread, self.per_process) {
            (true, _) => Root::Thread,
            (_, true) => Root::Process,
            _ => Root::Comm,
        }
    }
}

#[derive(Args, Debug)]
struct RecordArgs {
    /// Profile this process: all its threads, also ones it starts later.
    #[arg(short = 'p', long, conflicts_with = "command", value_parser = parse_pid, value_name = "PID",
          allow_negative_numbers = true)]
    pid: Option<u32>,
    /// Sampling frequency in Hz.
    #[arg(short = 'F', long = "frequency", default_value_t = 99, value_parser = parse_freq, value_name = "HZ",
          allow_negative_numbers = true)]
    freq: u64,
    /// Stop after this many seconds (a launched command is then stopped: see below).
    /// Default: until the command exits, or Ctrl-C.
    #[arg(short = 'd', long = "duration", value_parser = parse_duration, value_name = "SECONDS",
          allow_negative_numbers = true)]
    duration: Option<f64>,
    /// Store user frames as (build id, file offset) and symbolize offline.
    #[arg(long)]
    build_id: bool,
    #[command(flatten)]
    common: Common,
    /// The command to run and profile, with its arguments (`--` before it is optional).
    #[arg(
        value_name = "CMD",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<OsString>,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Sampling frequency in Hz.
    #[arg(short = 'F', long = "frequency", default_value_t = 999, value_parser = parse_freq, value_name = "HZ",
          allow_negative_numbers = true)]
    freq: u64,
    /// How much CPU time the workload runs for, in seconds.
    #[arg(short = 'd', long = "duration", default_value_t = 5.0, value_parser = parse_duration, value_name = "SECONDS",
          allow_negative_numbers = true)]
    duration: f64,
    /// Store user frames as (build id, file offset) and symbolize offline.
    #[arg(long)]
    build_id: bool,
    #[command(flatten)]
    common: Common,
}

fn check_freq(freq: u64) -> Result<()> {
    let max = std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(max) = max.filter(|&m| freq > m) {
        bail!("-F {freq} is above kernel.perf_event_max_sample_rate ({max})");
    }
    Ok(())
}

fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    Ok(stop)
}

fn pct(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        100.0 * n as f64 / of as f64
    }
}

/// What a run produced.
struct Outcome {
    stacks: Vec<symbolize::Stack>,
    child: Option<child::Ended>,
}

/// Records, symbolizes, writes. Everything the user gave is checked
/// before anything is created on disk.
fn profile(opts: &Options, common: &Common, title: &str) -> Result<Outcome> {
    check_freq(opts.freq)?;
    record::check_target(&opts.target)?;
    output::prepare_dir(&common.out)?;
    let stop = stop_flag()?;
    let prof = record::record(opts, &stop)?;
    let resolved = symbolize::resolve(&prof);
    let fp_warning = frame_pointer_warning(&resolved);
    let bid = resolved.build_id;
    let stacks = resolved.stacks;
    let root = common.root();
    output::write_folded_and_svg(&common.out, &stacks, root, title)?;
    let loss = Loss::of(&prof);
    pprof::write(
        &common.out,
        &stacks,
        &pprof::Meta {
            started: prof.started,
            duration: prof.elapsed,
            freq: prof.freq,
            comments: vec![
                format!("kstackprof {}: {title}", env!("CARGO_PKG_VERSION")),
                loss.line(prof.samples),
            ]
            .into_iter()
            .chain(
                prof.user_only.then(|| {
                    "user space only (perf_event_paranoid 2): no kernel frames".to_string()
                }),
            )
            .collect(),
        },
    )?;
    let shares = output::Shares::of(&stacks);
    println!("{}", shares.table(common.top));
    eprintln!(
        "kstackprof: {} samples in {:.1}s, {} distinct stacks; wrote {}, {} and {}",
        prof.samples,
        prof.elapsed.as_secs_f64(),
        prof.stacks,
        common.out.join("stacks.folded").display(),
        common.out.join("flamegraph.svg").display(),
        common.out.join("profile.pb.gz").display()
    );
    eprintln!("kstackprof: stacks kept in {}", prof.store.describe());
    eprintln!("kstackprof: {}", loss.line(prof.samples));
    if prof.store.build_id() {
        eprintln!(
            "kstackprof: build-id frames stored: {} with (build id, offset), {} as plain ips",
            bid.valid, bid.ip_only
        );
    }
    if prof.missed > 0 {
        eprintln!(
            "WARNING: {} stack parts ({:.1}% of samples) could not be stored; {}",
            prof.missed,
            pct(prof.missed, prof.samples),
            match prof.store {
                store::Store::Maps { .. } => {
                    "consider a bigger map (-s/--stack-storage-size), or the depot (no --kernel-map)"
                }
                store::Store::Depot { .. } => {
                    "the depot is full: consider --depot-capacity and --depot-arena-mib"
                }
            }
        );
    }
    if prof.lost > 0 {
        eprintln!(
            "WARNING: {} samples were lost ({:.1}%: ring buffer full); consider a lower -F",
            prof.lost,
            pct(prof.lost, prof.samples + prof.lost)
        );
    }
    if let Some(w) = fp_warning {
        eprintln!("{w}");
    }
    if let Some(e) = prof.child {
        if e.stopped {
            eprintln!(
                "kstackprof: stopped the command (SIGTERM to its process group{})",
                if libc::WIFSIGNALED(e.status) && libc::WTERMSIG(e.status) == libc::SIGKILL {
                    ", then SIGKILL"
                } else {
                    ""
                }
            );
        } else if e.shell_code() != 0 {
            eprintln!(
                "kstackprof: note: the command exited with status {}",
                e.shell_code()
            );
        }
    }
    Ok(Outcome {
        stacks,
        child: prof.child,
    })
}

/// Sample loss, from every source, as shares of the samples taken.
struct Loss {
    lost: u64,
    throttled: u64,
    missed: u64,
}

impl Loss {
    fn of(p: &record::Profile) -> Loss {
        Loss {
            lost: p.lost,
            throttled: p.throttled,
            missed: p.missed,
        }
    }

    fn line(&self, samples: u64) -> String {
        format!(
            "sample loss: {:.2}% lost in the kernel ({} records, ring full), {} throttling events, \
             {:.2}% of samples with a stack part not stored ({} drops)",
            pct(self.lost, samples + self.lost),
            self.lost,
            self.throttled,
            pct(self.missed, samples),
            self.missed
        )
    }
}

/// One warning when most user stacks are one or two frames deep: the
/// signature of code built without frame pointers (the kernel's
/// frame-pointer walk stops, or goes astray, at its first frame). Names the
/// files the shallow stacks stop in, most samples first.
fn frame_pointer_warning(r: &symbolize::Resolved) -> Option<String> {
    if r.user_samples < 20 || r.shallow_samples * 2 <= r.user_samples {
        return None;
    }
    let mut files: Vec<(&Arc<std::path::Path>, &u64)> = r.shallow.iter().collect();
    files.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let named: Vec<String> = files
        .iter()
        .take(5)
        .map(|(p, n)| {
            let name = p.file_name().map_or_else(
                || p.display().to_string(),
                |f| f.to_string_lossy().into_owned(),
            );
            format!("{name} ({:.0}%)", pct(**n, r.shallow_samples))
        })
        .collect();
    Some(format!(
        "WARNING: {:.0}% of user stacks are only 1-2 frames deep ({:.0}% cut where the \
         frame-pointer walk left the code): built without frame pointers? {}; rebuild with \
         -fno-omit-frame-pointer (C/C++) or -C force-frame-pointers=yes (Rust)",
        pct(r.shallow_samples, r.user_samples),
        pct(r.cut_samples, r.user_samples),
        if named.is_empty() {
            "(no file known)".to_string()
        } else {
            named.join(", ")
        }
    ))
}

fn run_record(a: RecordArgs) -> Result<ExitCode> {
    let target = match (a.pid, a.command.is_empty()) {
        (Some(pid), _) => Target::Pid(pid),
        (None, false) => Target::Command(a.command.clone()),
        (None, true) => Target::System,
    };
    let opts = Options {
        target,
        freq: a.freq,
        duration: a.duration.map(Duration::from_secs_f64),
        store: a.common.store(),
        build_id: a.build_id,
    };
    let out = profile(&opts, &a.common, "kstackprof")?;
    Ok(match out.child {
        Some(e) if !e.stopped => ExitCode::from(e.shell_code()),
        _ => ExitCode::SUCCESS,
    })
}

fn run_demo(a: DemoArgs) -> Result<ExitCode> {
    let exe = std::env::current_exe()?;
    let opts = Options {
        target: Target::Command(vec![
            exe.into_os_string(),
            "demo-worker".into(),
            a.duration.to_string().into(),
        ]),
        freq: a.freq,
        duration: None,
        store: a.common.store(),
        build_id: a.build_id,
    };
    let out = profile(&opts, &a.common, "kstackprof demo")?;
    let shares = output::Shares::of(&out.stacks);
    println!("demo: designed vs measured share of samples (total time in each function)");
    for (name, want) in demo::DESIGNED {
        let got = shares
            .by_name
            .get(name)
            .map_or(0.0, |&(_, total)| shares.pct(total));
        println!("  {name:<32} designed {want:5.1}%  measured {got:5.1}%");
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses the command line; a usage error is one line saying what is
/// wrong (clap's own text, without its tips), exit status 2.
fn parse_cli() -> Result<Cli, ExitCode> {
    use clap::error::ErrorKind;
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
            _ => {
                let text = e.to_string();
                let first = text.lines().next().unwrap_or("invalid arguments");
                let first = first.strip_prefix("error: ").unwrap_or(first);
                eprintln!("kstackprof: error: {first} (see --help)");
                Err(ExitCode::from(2))
            }
        },
    }
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match cli.cmd {
        Cmd::Record(a) => run_record(a),
        Cmd::Demo(a) => run_demo(a),
        Cmd::DemoWorker { seconds } => {
            demo::worker(seconds);
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kstackprof: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::Path;

    fn resolved(
        shallow: &[(&str, u64)],
        shallow_samples: u64,
        user_samples: u64,
    ) -> symbolize::Resolved {
        symbolize::Resolved {
            stacks: Vec::new(),
            build_id: symbolize::BuildIdStats::default(),
            shallow: shallow
                .iter()
                .map(|(p, n)| (Arc::from(Path::new(p)), *n))
                .collect::<HashMap<_, _>>(),
            shallow_samples,
            user_samples,
            cut_samples: shallow_samples / 2,
        }
    }

    #[test]
    fn frame_pointer_warning_names_the_binaries_when_most_stacks_are_shallow() {
        let r = resolved(
            &[("/usr/bin/sha256sum", 80), ("/usr/lib/libc.so.6", 10)],
            90,
            100,
        );
        let w = frame_pointer_warning(&r).expect("a warning");
        assert!(
            w.starts_with("WARNING: 90% of user stacks are only 1-2 frames deep"),
            "{w}"
        );
        assert!(w.contains("sha256sum (89%), libc.so.6 (11%)"), "{w}");
        assert_eq!(w.lines().count(), 1);
        // Half or fewer: deep stacks are the norm, no warning.
        assert!(frame_pointer_warning(&resolved(&[("/bin/x", 50)], 50, 100)).is_none());
        // Too few samples to say.
        assert!(frame_pointer_warning(&resolved(&[("/bin/x", 10)], 10, 10)).is_none());
    }
}

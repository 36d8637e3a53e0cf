//! kstackprof: a sampling profiler whose stacks live in a kstackmap
//! `StackMap`, the way BCC's `profile` keeps them in a BPF stack trace map.
//!
//! `perf_event_open` cpu-clock samples (kernel + user callchains) are read
//! from per-CPU mmap rings; each sample's kernel and user parts go through
//! `StackMap::get_stackid_pe` into two fixed-size maps; after recording
//! every stack is looked up once, symbolized (blazesym), and written as
//! folded stacks, a flame graph (inferno) and a top-N table.

mod buildid;
mod demo;
mod maps;
mod output;
mod perf;
mod record;
mod stackmap;
mod symbolize;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

use record::{Options, Target};

#[derive(Parser, Debug)]
#[command(
    name = "kstackprof",
    version,
    about = "Sampling profiler (perf_event_open cpu-clock) with stacks deduplicated in a kstackmap StackMap"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Profile a process (-p), a command (after --), or the whole system.
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

#[derive(Args, Debug, Clone)]
struct Common {
    /// Output directory for stacks.folded and flamegraph.svg.
    #[arg(short = 'o', long = "output", default_value = "kstackprof-out")]
    out: PathBuf,
    /// Entries in each stack map (kernel and user); raise it when stacks are dropped.
    #[arg(short = 's', long = "stack-storage-size", default_value_t = 16384)]
    storage_size: u32,
    /// Rows in the top-functions table.
    #[arg(long, default_value_t = 15)]
    top: usize,
}

#[derive(Args, Debug)]
struct RecordArgs {
    /// Profile this process (all its threads).
    #[arg(short = 'p', long, conflicts_with = "command")]
    pid: Option<u32>,
    /// Sampling frequency in Hz.
    #[arg(short = 'F', long = "frequency", default_value_t = 99)]
    freq: u64,
    /// Stop after this many seconds (default: until the command exits, or Ctrl-C).
    #[arg(short = 'd', long = "duration")]
    duration: Option<f64>,
    /// Store user frames as (build id, file offset) and symbolize offline.
    #[arg(long)]
    build_id: bool,
    #[command(flatten)]
    common: Common,
    /// The command to run and profile.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Sampling frequency in Hz.
    #[arg(short = 'F', long = "frequency", default_value_t = 999)]
    freq: u64,
    /// How much CPU time the workload runs for, in seconds.
    #[arg(short = 'd', long = "duration", default_value_t = 5.0)]
    duration: f64,
    /// Store user frames as (build id, file offset) and symbolize offline.
    #[arg(long)]
    build_id: bool,
    #[command(flatten)]
    common: Common,
}

fn check_freq(freq: u64) -> Result<()> {
    if freq == 0 {
        bail!("the sampling frequency must be at least 1 Hz");
    }
    let max = std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(max) = max.filter(|&m| freq > m) {
        bail!("-F {freq} is above kernel.perf_event_max_sample_rate ({max})");
    }
    Ok(())
}

fn duration(secs: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow::anyhow!("the duration must be a positive number of seconds"))
}

fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    Ok(stop)
}

/// Records, symbolizes, writes; returns the symbolized stacks.
fn profile(opts: &Options, common: &Common, title: &str) -> Result<Vec<symbolize::Stack>> {
    output::prepare_dir(&common.out)?;
    if common.storage_size == 0 {
        bail!("--stack-storage-size must be at least 1");
    }
    let stop = stop_flag()?;
    let prof = record::record(opts, &stop)?;
    let (stacks, bid) = symbolize::resolve(&prof);
    output::write_all(&common.out, &stacks, title)?;
    let shares = output::Shares::of(&stacks);
    println!("{}", shares.table(common.top));
    eprintln!(
        "kstackprof: {} samples in {:.1}s, {} distinct stacks; wrote {} and {}",
        prof.samples,
        prof.elapsed.as_secs_f64(),
        prof.stacks,
        common.out.join("stacks.folded").display(),
        common.out.join("flamegraph.svg").display()
    );
    if prof.build_id {
        eprintln!(
            "kstackprof: build-id frames stored: {} with (build id, offset), {} as plain ips",
            bid.valid, bid.ip_only
        );
    }
    if prof.missed > 0 {
        eprintln!(
            "WARNING: {} stack traces could not be stored; consider a bigger map (-s/--stack-storage-size)",
            prof.missed
        );
    }
    if prof.lost > 0 {
        eprintln!(
            "WARNING: {} samples were lost (ring buffer full); consider a lower -F",
            prof.lost
        );
    }
    if let Some(st) = prof.child_status {
        if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) != 0 {
            eprintln!(
                "kstackprof: note: the command exited with status {}",
                libc::WEXITSTATUS(st)
            );
        }
    }
    Ok(stacks)
}

fn run_record(a: RecordArgs) -> Result<()> {
    check_freq(a.freq)?;
    let target = match (a.pid, a.command.is_empty()) {
        (Some(pid), _) => Target::Pid(pid),
        (None, false) => Target::Command(a.command.clone()),
        (None, true) => Target::System,
    };
    let opts = Options {
        target,
        freq: a.freq,
        duration: a.duration.map(duration).transpose()?,
        storage_size: a.common.storage_size,
        build_id: a.build_id,
    };
    profile(&opts, &a.common, "kstackprof").map(|_| ())
}

fn run_demo(a: DemoArgs) -> Result<()> {
    check_freq(a.freq)?;
    duration(a.duration)?;
    let exe = std::env::current_exe()?;
    let opts = Options {
        target: Target::Command(vec![
            exe.into_os_string(),
            "demo-worker".into(),
            a.duration.to_string().into(),
        ]),
        freq: a.freq,
        duration: None,
        storage_size: a.common.storage_size,
        build_id: a.build_id,
    };
    let stacks = profile(&opts, &a.common, "kstackprof demo")?;
    let shares = output::Shares::of(&stacks);
    println!("demo: designed vs measured share of samples (total time in each function)");
    for (name, want) in demo::DESIGNED {
        let got = shares
            .by_name
            .get(name)
            .map_or(0.0, |&(_, total)| shares.pct(total));
        println!("  {name:<32} designed {want:5.1}%  measured {got:5.1}%");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Record(a) => run_record(a),
        Cmd::Demo(a) => run_demo(a),
        Cmd::DemoWorker { seconds } => {
            demo::worker(seconds);
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kstackprof: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

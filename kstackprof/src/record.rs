//! Recording: perf samples in, stack ids and counts out.
//!
//! Every sample goes through the stack store twice, as BCC's `profile` does
//! with `bpf_get_stackid`: once for the kernel part (flags 0) and once for
//! the user part (`BPF_F_USER_STACK`). The front end counts
//! `(pid, tid, comm, kernel id, user id)`.
//!
//! Events, by target:
//! - a command: one event per CPU on the forked child (`inherit`,
//!   `enable_on_exec`), so everything it starts is followed;
//! - `-p PID`: per-task events, one per (thread, CPU), each thread's events
//!   with `inherit` so the threads it creates later are followed (their
//!   `PERF_RECORD_FORK` tells which); `/proc/PID/task` is scanned again
//!   every [`RESCAN`] for threads that neither existed at the start nor were
//!   inherited. Per-task events are what `perf record -p` uses: they work
//!   at `perf_event_paranoid` 1 for one's own processes;
//! - the whole system: one CPU-wide event per CPU (`perf_event_paranoid`
//!   0 or lower, or CAP_PERFMON).
//!
//! At `perf_event_paranoid` 2 an unprivileged user may not sample the
//! kernel: per-task events are then opened user-only (`exclude_kernel`),
//! with a one-line note.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Result};
use kstackmap::Error as MapError;

use crate::buildid::{BuildIds, Resolvers};
use crate::child::{resolve_program, Child, Ended};
use crate::maps::{Mapping, MapsTable};
use crate::perf::{self, EventSpec, Record, Ring};
use crate::store::{DepotSize, Store};

/// What to profile.
#[derive(Clone, Debug)]
pub enum Target {
    /// Every task on the machine.
    System,
    /// One running process (all its threads, also ones it starts later).
    Pid(u32),
    /// A command started by us, and everything it starts.
    Command(Vec<OsString>),
}

/// Recording settings.
#[derive(Clone, Debug)]
pub struct Options {
    pub target: Target,
    pub freq: u64,
    pub duration: Option<Duration>,
    /// Where stacks are kept.
    pub store: StoreKind,
    /// Store user frames as `StackBuildId`s.
    pub build_id: bool,
}

/// Which stack store to record into.
#[derive(Clone, Copy, Debug)]
pub enum StoreKind {
    /// A depot (the default); sized from the rate, the duration and the
    /// CPUs unless given.
    Depot {
        capacity: Option<u32>,
        arena_words: Option<usize>,
    },
    /// Two kernel-exact maps of this many entries (`--kernel-map`).
    KernelMap { entries: u32 },
}

/// One part of a sample's stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    /// Stored under this id.
    Id(u32),
    /// The sample has no such part (kernel part of a user-mode sample, user
    /// part of a kernel thread): the map said EFAULT.
    Absent,
    /// The store could not keep it (map: EEXIST, a hash collision, or
    /// ENOMEM, full).
    Missed,
}

/// What the counts are keyed by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub pid: u32,
    pub tid: u32,
    /// The exec generation of `pid` the sample was taken in (see
    /// [`MapsTable`]).
    pub gen: u32,
    /// The thread's name.
    pub comm: Arc<str>,
    /// The process's name (its main thread's).
    pub pcomm: Arc<str>,
    pub kernel: Part,
    pub user: Part,
}

/// A finished recording: the stores and everything needed to read them.
pub struct Profile {
    pub store: Store,
    pub counts: HashMap<Key, u64>,
    /// Samples taken (of the target).
    pub samples: u64,
    /// Samples the kernel dropped because a ring was full (`PERF_RECORD_LOST`).
    pub lost: u64,
    /// Times the kernel throttled sampling (`PERF_RECORD_THROTTLE`).
    pub throttled: u64,
    /// Stack parts the store could not keep.
    pub missed: u64,
    /// Distinct stacks: distinct (kernel part, user part) pairs.
    pub stacks: usize,
    pub maps: MapsTable,
    /// Build ids of the files seen, and back to the files.
    pub build_ids: BuildIds,
    /// When recording started (wall clock) and how long it ran.
    pub started: SystemTime,
    pub elapsed: Duration,
    pub freq: u64,
    /// Whether only user space was sampled (`perf_event_paranoid` 2).
    pub user_only: bool,
    /// How the launched command ended (command mode).
    pub child: Option<Ended>,
}

/// How often `-p` looks for threads it does not sample yet.
pub const RESCAN: Duration = Duration::from_millis(200);

struct State {
    store: Store,
    counts: HashMap<Key, u64>,
    pairs: HashSet<(Part, Part)>,
    comms: HashMap<u32, Arc<str>>,
    maps: MapsTable,
    resolvers: Resolvers,
    filter: Option<u32>,
    /// `-p`: threads of the target created by a sampled thread (covered by
    /// `inherit`).
    inherited: HashSet<u32>,
    samples: u64,
    lost: u64,
    throttled: u64,
    missed: u64,
}

impl State {
    fn part(&mut self, user: bool, pid: u32, cpu: usize, chain: &[u64]) -> Part {
        let resolver = (user && self.store.build_id()).then(|| {
            self.maps.ensure(pid);
            self.resolvers.get(pid, &self.maps)
        });
        let res = self.store.intern(cpu, chain, user, resolver);
        match res {
            Ok(id) => Part::Id(id),
            Err(MapError::Fault) => Part::Absent,
            Err(_) => {
                self.missed += 1;
                Part::Missed
            }
        }
    }

    fn comm(&mut self, pid: u32, tid: u32) -> Arc<str> {
        self.comms
            .entry(tid)
            .or_insert_with(|| read_comm(pid, tid))
            .clone()
    }

    fn handle(&mut self, cpu: usize, rec: Record<'_>) {
        match rec {
            Record::Sample {
                pid,
                tid,
                callchain,
            } => {
                if self.filter.is_some_and(|want| want != pid) {
                    return;
                }
                self.samples += 1;
                // First sight of a process that was running before we
                // started: its mappings, while it is still there.
                self.maps.ensure(pid);
                let kernel = self.part(false, pid, cpu, callchain);
                let user = self.part(true, pid, cpu, callchain);
                self.pairs.insert((kernel, user));
                let comm = self.comm(pid, tid);
                let pcomm = self.comm(pid, pid);
                let key = Key {
                    pid,
                    tid,
                    gen: self.maps.generation(pid),
                    comm,
                    pcomm,
                    kernel,
                    user,
                };
                *self.counts.entry(key).or_insert(0) += 1;
            }
            Record::Lost { lost } => self.lost += lost,
            Record::Throttle => self.throttled += 1,
            Record::Comm {
                pid,
                tid,
                comm,
                exec,
            } => {
                let name = String::from_utf8_lossy(comm);
                self.comms.insert(tid, name.as_ref().into());
                if exec {
                    self.maps.exec(pid);
                }
            }
            Record::Mmap2 {
                pid,
                addr,
                len,
                pgoff,
                filename,
            } => {
                if self.filter.is_none_or(|want| want == pid) {
                    let path = Path::new(std::ffi::OsStr::from_bytes(filename));
                    self.maps.add(
                        pid,
                        Mapping {
                            start: addr,
                            end: addr.saturating_add(len),
                            pgoff,
                            path: Arc::from(path),
                        },
                    );
                }
            }
            Record::Fork {
                pid,
                ppid,
                tid,
                ptid,
            } => {
                // The new task is named like its creator until it execs or
                // renames itself.
                if let Some(c) = self.comms.get(&ptid).cloned() {
                    self.comms.entry(tid).or_insert(c);
                }
                if pid != ppid {
                    self.maps.fork(ppid, pid);
                } else if self.filter == Some(pid) {
                    self.inherited.insert(tid);
                }
            }
            Record::Other => {}
        }
    }
}

fn read_comm(pid: u32, tid: u32) -> Arc<str> {
    let path = format!("/proc/{pid}/task/{tid}/comm");
    let name = std::fs::read_to_string(path).unwrap_or_default();
    let name = name.trim();
    if name.is_empty() {
        "[unknown]".into()
    } else {
        name.into()
    }
}

/// What a set of events needs from `perf_event_paranoid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// CPU-wide events: paranoid <= 0.
    CpuWide,
    /// Per-task events with kernel samples: paranoid <= 1.
    Task,
    /// Per-task, user space only: paranoid <= 2, and the task must be one's
    /// own.
    TaskUserOnly,
}

fn is_perm(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM))
}

/// Why a perf_event_open failed, in words a person can act on.
fn open_error(err: std::io::Error, need: Need, target: &Target) -> anyhow::Error {
    let level = perf::paranoid_level().map_or_else(|| "unknown".to_string(), |l| l.to_string());
    match err.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => match need {
            Need::CpuWide => anyhow!(
                "permission denied opening perf events (kernel.perf_event_paranoid = {level}); \
                 whole-system profiling needs root, CAP_PERFMON (setcap cap_perfmon+ep), or \
                 `sysctl kernel.perf_event_paranoid=0`"
            ),
            Need::Task | Need::TaskUserOnly => {
                let whose = match target {
                    Target::Pid(pid) => format!("process {pid} is not yours or "),
                    _ => String::new(),
                };
                anyhow!(
                    "permission denied opening perf events (kernel.perf_event_paranoid = {level}): \
                     {whose}perf events are disabled for unprivileged users; run as root, grant \
                     CAP_PERFMON (setcap cap_perfmon+ep), or run \
                     `sysctl kernel.perf_event_paranoid=1`"
                )
            }
        },
        Some(libc::ESRCH) => anyhow!("no such process"),
        Some(libc::EMFILE) | Some(libc::ENFILE) => anyhow!(
            "too many open files for one event per thread and CPU ({err}); raise `ulimit -n`"
        ),
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::EOPNOTSUPP) => {
            anyhow!("this kernel has no cpu-clock perf event: {err}")
        }
        _ => anyhow!("perf_event_open: {err}"),
    }
}

/// One ring per CPU, each with the event `spec` (CPU-wide or one task).
fn open_per_cpu(spec: &EventSpec) -> std::io::Result<Vec<Ring>> {
    perf::online_cpus()
        .into_iter()
        .map(|cpu| Ring::open(spec, cpu))
        .collect()
}

/// The threads of `pid` now.
fn tasks(pid: u32) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// `-p`: events for every thread of the target on every CPU, into one ring
/// per CPU; returns the threads opened. Threads that exit meanwhile are
/// skipped.
///
/// A thread created by thread A while A's events are being opened (between
/// two CPUs) inherits only the events opened so far; that window is the
/// few microseconds of one thread's opens.
struct Attach {
    pid: u32,
    user_only: bool,
    freq: u64,
    opened: HashSet<u32>,
    /// Threads seen unsampled at the last scan (opened if still so at the
    /// next: their FORK record may not have been read yet).
    pending: HashSet<u32>,
    next_scan: Instant,
}

impl Attach {
    fn spec(&self, tid: u32) -> EventSpec {
        EventSpec {
            pid: tid as libc::pid_t,
            inherit: true,
            enable_on_exec: false,
            user_only: self.user_only,
            freq: self.freq,
        }
    }

    /// Opens `tid` on every CPU (into `rings`, creating them on first use).
    fn open_thread(
        &mut self,
        rings: &mut Vec<Ring>,
        tid: u32,
        enabled: bool,
    ) -> std::io::Result<()> {
        let spec = self.spec(tid);
        let cpus = perf::online_cpus();
        for (i, &cpu) in cpus.iter().enumerate() {
            match rings.get_mut(i) {
                Some(r) => r.add(&spec, enabled)?,
                None => rings.push(Ring::open(&spec, cpu)?),
            }
        }
        self.opened.insert(tid);
        Ok(())
    }

    fn open_all(&mut self) -> std::io::Result<Vec<Ring>> {
        let mut rings = Vec::new();
        let mut last_err = None;
        for tid in tasks(self.pid) {
            match self.open_thread(&mut rings, tid, false) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        if rings.is_empty() {
            return Err(last_err.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::ESRCH)));
        }
        Ok(rings)
    }

    /// Opens events for threads that are neither sampled nor inherited.
    fn rescan(&mut self, rings: &mut Vec<Ring>, inherited: &HashSet<u32>) {
        let mut pending = HashSet::new();
        for tid in tasks(self.pid) {
            if self.opened.contains(&tid) || inherited.contains(&tid) {
                continue;
            }
            if self.pending.contains(&tid) {
                // Failures (the thread exited) are fine; it is retried only
                // if it is still there.
                let _ = self.open_thread(rings, tid, true);
            } else {
                pending.insert(tid);
            }
        }
        self.pending = pending;
        self.next_scan = Instant::now() + RESCAN;
    }
}

/// Checks the target before anything is created on disk: the process
/// exists, the command can be found.
///
/// # Errors
/// No such process, command not found, not executable.
pub fn check_target(target: &Target) -> Result<()> {
    match target {
        Target::System => Ok(()),
        Target::Pid(pid) => {
            if *pid == 0 || !Path::new(&format!("/proc/{pid}/task")).exists() {
                bail!("no such process: {pid}");
            }
            Ok(())
        }
        Target::Command(argv) => {
            let prog = argv.first().ok_or_else(|| anyhow!("no command given"))?;
            resolve_program(prog).map(|_| ())
        }
    }
}

/// Opens per-task events with kernel samples, or user-only ones when
/// `perf_event_paranoid` forbids the kernel; says so in one line.
fn with_fallback<T>(
    target: &Target,
    mut open: impl FnMut(bool) -> std::io::Result<T>,
) -> Result<(T, bool)> {
    match open(false) {
        Ok(t) => Ok((t, false)),
        Err(e) if is_perm(&e) => match open(true) {
            Ok(t) => {
                let level = perf::paranoid_level().unwrap_or(2);
                eprintln!(
                    "kstackprof: note: kernel.perf_event_paranoid = {level}: sampling user space \
                     only (no kernel frames, time in the kernel is not sampled); root, \
                     CAP_PERFMON or perf_event_paranoid <= 1 adds the kernel"
                );
                Ok((t, true))
            }
            Err(e) => Err(open_error(e, Need::TaskUserOnly, target)),
        },
        Err(e) => Err(open_error(e, Need::Task, target)),
    }
}

/// Records until the duration passes, the target ends, or Ctrl-C.
///
/// # Errors
/// Events could not be opened (permissions, no such process), the command
/// could not start, a map could not be created.
pub fn record(opts: &Options, stop: &Arc<AtomicBool>) -> Result<Profile> {
    let cpus = perf::online_cpus();
    let nr_cpus = cpus.iter().max().map_or(1, |m| m + 1);
    let mut maps = MapsTable::default();
    let mut comms = HashMap::new();
    let mut child = None;
    let mut attach = None;
    let (mut rings, user_only, filter) = match &opts.target {
        Target::System => {
            let spec = EventSpec {
                pid: -1,
                inherit: false,
                enable_on_exec: false,
                user_only: false,
                freq: opts.freq,
            };
            let rings =
                open_per_cpu(&spec).map_err(|e| open_error(e, Need::CpuWide, &opts.target))?;
            // Every process's mappings and name now, as `perf record -a`
            // does: a process that exits before its first sample is read
            // still resolves.
            maps.snapshot_all();
            for pid in maps.pids().collect::<Vec<_>>() {
                comms.insert(pid, read_comm(pid, pid));
            }
            (rings, false, None)
        }
        Target::Pid(pid) => {
            let mut a = Attach {
                pid: *pid,
                user_only: false,
                freq: opts.freq,
                opened: HashSet::new(),
                pending: HashSet::new(),
                next_scan: Instant::now() + RESCAN,
            };
            let (rings, user_only) = with_fallback(&opts.target, |user_only| {
                a.user_only = user_only;
                a.opened.clear();
                a.open_all()
            })
            .map_err(|e| {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    anyhow!("no such process: {pid}")
                } else {
                    e
                }
            })?;
            maps.ensure(*pid);
            attach = Some(a);
            (rings, user_only, Some(*pid))
        }
        Target::Command(argv) => {
            let c = Child::spawn(argv)?;
            let pid = c.pid;
            // On error the child exits when dropped.
            child = Some(c);
            let (rings, user_only) = with_fallback(&opts.target, |user_only| {
                open_per_cpu(&EventSpec {
                    pid,
                    inherit: true,
                    enable_on_exec: true,
                    user_only,
                    freq: opts.freq,
                })
            })?;
            (rings, user_only, None)
        }
    };
    let mut state = State {
        store: match opts.store {
            StoreKind::KernelMap { entries } => Store::maps(entries, nr_cpus, opts.build_id)?,
            StoreKind::Depot {
                capacity,
                arena_words,
            } => {
                let auto = DepotSize::for_recording(
                    opts.freq,
                    opts.duration.map(|d| d.as_secs_f64()),
                    cpus.len(),
                    opts.build_id,
                );
                let size = DepotSize {
                    capacity: capacity.unwrap_or(auto.capacity),
                    arena_words: arena_words.unwrap_or(auto.arena_words),
                };
                Store::depot(size, nr_cpus, opts.build_id)?
            }
        },
        counts: HashMap::new(),
        pairs: HashSet::new(),
        comms,
        maps,
        resolvers: Resolvers::default(),
        filter,
        inherited: HashSet::new(),
        samples: 0,
        lost: 0,
        throttled: 0,
        missed: 0,
    };
    let started = SystemTime::now();
    let start = Instant::now();
    match (&mut child, &opts.target) {
        (Some(c), Target::Command(argv)) => c.go(&argv[0])?,
        _ => {
            for r in &rings {
                r.enable()
                    .map_err(|e| open_error(e, Need::Task, &opts.target))?;
            }
        }
    }
    let deadline = opts.duration.map(|d| start + d);
    let tty = std::io::stderr().is_terminal();
    let mut next_progress = start + Duration::from_secs(1);
    loop {
        perf::poll(&rings, 100);
        for r in &mut rings {
            let cpu = r.cpu;
            r.drain(|rec| state.handle(cpu, rec));
        }
        let now = Instant::now();
        if let Some(a) = attach.as_mut().filter(|a| now >= a.next_scan) {
            a.rescan(&mut rings, &state.inherited);
        }
        let target_gone = match (&mut child, filter) {
            (Some(c), _) => c.poll(),
            (None, Some(pid)) => !Path::new(&format!("/proc/{pid}")).exists(),
            _ => false,
        };
        let done =
            stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| now >= d) || target_gone;
        if now >= next_progress || done {
            next_progress = now + Duration::from_secs(1);
            let line = format!(
                "kstackprof: {:5.1}s  {} samples  {} stacks  {} drops  {} lost",
                (now - start).as_secs_f64(),
                state.samples,
                state.pairs.len(),
                state.missed,
                state.lost
            );
            if tty {
                eprint!("\r{line}\x1b[K");
            } else if done {
                eprintln!("{line}");
            }
        }
        if done {
            break;
        }
    }
    if tty {
        eprintln!();
    }
    for r in &rings {
        r.disable();
    }
    for r in &mut rings {
        let cpu = r.cpu;
        r.drain(|rec| state.handle(cpu, rec));
    }
    let elapsed = start.elapsed();
    let ended = child.as_mut().and_then(|c| {
        c.stop();
        c.ended()
    });
    drop(rings);
    Ok(Profile {
        stacks: state.pairs.len(),
        store: state.store,
        counts: state.counts,
        samples: state.samples,
        lost: state.lost,
        throttled: state.throttled,
        missed: state.missed,
        maps: state.maps,
        build_ids: state.resolvers.ids,
        started,
        elapsed,
        freq: opts.freq,
        user_only,
        child: ended,
    })
}

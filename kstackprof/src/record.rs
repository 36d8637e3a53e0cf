//! Recording: perf samples in, stack ids and counts out.
//!
//! Every sample goes through the stack map twice, as BCC's `profile` does
//! with `bpf_get_stackid`: once for the kernel part (flags 0) and once for
//! the user part (`BPF_F_USER_STACK`), each into its own fixed-size map.
//! The front end counts `(pid, comm, kernel id, user id)`.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsString};
use std::io::{IsTerminal, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kstackmap::uapi::{BPF_F_STACK_BUILD_ID, BPF_F_USER_STACK, PERF_MAX_STACK_DEPTH};
use kstackmap::{Error as MapError, StackBuildId};

use crate::buildid::{BuildIds, Resolvers};
use crate::maps::{Mapping, MapsTable};
use crate::perf::{self, Record, Ring, Scope};
use crate::stackmap::{Config, MapAttr, StackMap};

/// What to profile.
#[derive(Clone, Debug)]
pub enum Target {
    /// Every task on the machine.
    System,
    /// One running process (all its threads).
    Pid(u32),
    /// A command started by us, and everything it forks.
    Command(Vec<OsString>),
}

/// Recording settings.
#[derive(Clone, Debug)]
pub struct Options {
    pub target: Target,
    pub freq: u64,
    pub duration: Option<Duration>,
    pub storage_size: u32,
    /// Store user frames as `StackBuildId`s (a `BPF_F_STACK_BUILD_ID` map).
    pub build_id: bool,
}

/// One part of a sample's stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    /// Stored under this id.
    Id(u32),
    /// The sample has no such part (kernel part of a user-mode sample, user
    /// part of a kernel thread): the map said EFAULT.
    Absent,
    /// The map could not store it (EEXIST: hash collision, ENOMEM: full).
    Missed,
}

/// What the counts are keyed by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub pid: u32,
    pub comm: Arc<str>,
    pub kernel: Part,
    pub user: Part,
}

/// A finished recording: the two maps and everything needed to read them.
pub struct Profile {
    pub kernel_map: StackMap,
    pub user_map: StackMap,
    pub counts: HashMap<Key, u64>,
    pub samples: u64,
    pub lost: u64,
    pub missed: u64,
    pub stacks: usize,
    pub maps: MapsTable,
    /// Whether `user_map` holds `StackBuildId` frames.
    pub build_id: bool,
    /// Build ids of the files seen, and back to the files.
    pub build_ids: BuildIds,
    pub elapsed: Duration,
    /// How the child ended (command mode).
    pub child_status: Option<i32>,
}

/// Words per stored stack (`value_size / 8`).
pub const STACK_WORDS: u32 = PERF_MAX_STACK_DEPTH;

struct State {
    kernel_map: StackMap,
    user_map: StackMap,
    counts: HashMap<Key, u64>,
    ids: HashSet<(bool, u32)>,
    comms: HashMap<u32, Arc<str>>,
    maps: MapsTable,
    build_id: bool,
    resolvers: Resolvers,
    filter: Option<u32>,
    samples: u64,
    lost: u64,
    missed: u64,
}

impl State {
    fn part(&mut self, user: bool, pid: u32, cpu: usize, chain: &[u64]) -> Part {
        let res = if !user {
            self.kernel_map.get_stackid_pe(cpu, chain, 0)
        } else if self.build_id {
            self.maps.ensure(pid);
            let r = self.resolvers.get(pid, &self.maps);
            self.user_map
                .get_stackid_pe_resolved(cpu, chain, BPF_F_USER_STACK, r)
        } else {
            self.user_map.get_stackid_pe(cpu, chain, BPF_F_USER_STACK)
        };
        match res {
            Ok(id) => {
                self.ids.insert((user, id));
                Part::Id(id)
            }
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
            .or_insert_with(|| {
                let path = format!("/proc/{pid}/task/{tid}/comm");
                let name = std::fs::read_to_string(path).unwrap_or_default();
                let name = name.trim();
                if name.is_empty() {
                    "[unknown]".into()
                } else {
                    name.into()
                }
            })
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
                let kernel = self.part(false, pid, cpu, callchain);
                let user = self.part(true, pid, cpu, callchain);
                if matches!(user, Part::Id(_)) {
                    self.maps.ensure(pid);
                }
                let comm = self.comm(pid, tid);
                let key = Key {
                    pid,
                    comm,
                    kernel,
                    user,
                };
                *self.counts.entry(key).or_insert(0) += 1;
            }
            Record::Lost { lost } => self.lost += lost,
            Record::Comm { tid, comm, .. } => {
                let name = String::from_utf8_lossy(comm);
                self.comms.insert(tid, name.as_ref().into());
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
            Record::Fork { pid, ppid } => {
                if pid != ppid {
                    self.maps.fork(ppid, pid);
                }
            }
            Record::Other => {}
        }
    }
}

/// Why a perf_event_open failed, in words a person can act on.
fn open_error(err: std::io::Error, scope: Scope) -> anyhow::Error {
    match err.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => {
            let level =
                perf::paranoid_level().map_or_else(|| "unknown".to_string(), |l| l.to_string());
            // Kernel callchains need <= 1; CPU-wide events (-p, system) <= 0.
            let need = match scope {
                Scope::AllTasks => 0,
                Scope::ExecOf(_) => 1,
            };
            anyhow!(
                "permission denied opening perf events (kernel.perf_event_paranoid = {level}); \
                 run as root, grant CAP_PERFMON (setcap cap_perfmon+ep), or run \
                 `sysctl kernel.perf_event_paranoid={need}`"
            )
        }
        Some(libc::ESRCH) => anyhow!("no such process"),
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::EOPNOTSUPP) => {
            anyhow!("this kernel has no cpu-clock perf event: {err}")
        }
        _ => anyhow!("perf_event_open: {err}"),
    }
}

fn open_rings(scope: Scope, freq: u64) -> Result<Vec<Ring>> {
    let mut rings = Vec::new();
    for cpu in perf::online_cpus() {
        match Ring::open(scope, cpu, freq) {
            Ok(r) => rings.push(r),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && !rings.is_empty() => {
                bail!("perf ring mmap: {e} (raise kernel.perf_event_mlock_kb or ulimit -l)")
            }
            Err(e) => return Err(open_error(e, scope)),
        }
    }
    if rings.is_empty() {
        bail!("no online CPU found");
    }
    Ok(rings)
}

/// A command forked and waiting for the go-ahead before `execv`.
struct Child {
    pid: libc::pid_t,
    go: Option<std::fs::File>,
    errors: std::fs::File,
    reaped: Option<i32>,
}

/// Finds `prog` the way `execvp` would, so that "command not found" is
/// reported before anything starts.
fn resolve_program(prog: &std::ffi::OsStr) -> Result<PathBuf> {
    let is_exec = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if prog.as_bytes().contains(&b'/') {
        let p = PathBuf::from(prog);
        if !p.exists() {
            bail!("command not found: {}", p.display());
        }
        if !is_exec(&p) {
            bail!("not an executable file: {}", p.display());
        }
        return Ok(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(prog))
        .find(|p| is_exec(p))
        .ok_or_else(|| anyhow!("command not found: {}", prog.to_string_lossy()))
}

fn pipe() -> Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe");
    }
    // SAFETY: pipe2 returned two fresh fds that we now own.
    Ok(unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    })
}

impl Child {
    fn spawn(argv: &[OsString]) -> Result<Child> {
        use std::os::fd::AsRawFd;
        let prog = argv.first().ok_or_else(|| anyhow!("no command given"))?;
        let path = resolve_program(prog)?;
        let path_c = CString::new(path.into_os_string().into_vec())?;
        let args: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()?;
        let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        arg_ptrs.push(std::ptr::null());
        let (go_r, go_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        // SAFETY: fork in a process that has no other threads yet (recording
        // starts before any thread is spawned); the child only calls
        // async-signal-safe functions (read, execv, write, _exit).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            // SAFETY: see above; all pointers were prepared before the fork.
            unsafe {
                let mut b = 0u8;
                libc::close(go_w.as_raw_fd());
                if libc::read(go_r.as_raw_fd(), (&raw mut b).cast(), 1) != 1 {
                    libc::_exit(127);
                }
                libc::execv(path_c.as_ptr(), arg_ptrs.as_ptr());
                let errno = *libc::__errno_location();
                libc::write(err_w.as_raw_fd(), (&raw const errno).cast(), 4);
                libc::_exit(127);
            }
        }
        drop(go_r);
        drop(err_w);
        Ok(Child {
            pid,
            go: Some(go_w),
            errors: err_r,
            reaped: None,
        })
    }

    /// Lets the child exec; fails if the exec failed.
    fn go(&mut self, name: &std::ffi::OsStr) -> Result<()> {
        use std::io::Read;
        if let Some(mut go) = self.go.take() {
            go.write_all(&[1]).context("starting the command")?;
        }
        let mut buf = [0u8; 4];
        let n = self.errors.read(&mut buf).unwrap_or(0);
        if n == 4 {
            self.wait();
            let err = std::io::Error::from_raw_os_error(i32::from_ne_bytes(buf));
            bail!("cannot run {}: {err}", name.to_string_lossy());
        }
        Ok(())
    }

    fn try_wait(&mut self) -> bool {
        if self.reaped.is_some() {
            return true;
        }
        let mut status = 0;
        // SAFETY: waiting on our own child.
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        if r == self.pid || r < 0 {
            self.reaped = Some(status);
            true
        } else {
            false
        }
    }

    fn wait(&mut self) -> Option<i32> {
        if self.reaped.is_none() {
            let mut status = 0;
            // SAFETY: waiting on our own child.
            unsafe { libc::waitpid(self.pid, &mut status, 0) };
            self.reaped = Some(status);
        }
        self.reaped
    }

    /// Asks a still-running child to stop (SIGTERM, then SIGKILL after 1 s).
    fn stop(&mut self) {
        if self.try_wait() {
            return;
        }
        // SAFETY: signalling our own, not yet reaped, child.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            if self.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: as above.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        self.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.go.is_some() {
            // Never started: closing the go pipe makes it exit.
            self.go = None;
        }
        if self.reaped.is_none() {
            self.stop();
        }
    }
}

fn new_map(entries: u32, nr_cpus: usize, build_id: bool) -> Result<StackMap> {
    let (frame, map_flags) = if build_id {
        (
            std::mem::size_of::<StackBuildId>() as u32,
            BPF_F_STACK_BUILD_ID,
        )
    } else {
        (8, 0)
    };
    let attr = MapAttr {
        max_entries: entries,
        key_size: 4,
        value_size: STACK_WORDS * frame,
        map_flags,
        numa_node: 0,
    };
    let cfg = Config {
        nr_cpus,
        max_stack: PERF_MAX_STACK_DEPTH,
    };
    StackMap::with_config(&attr, cfg)
        .map_err(|e| anyhow!("cannot create a stack map of {entries} entries: {e}"))
}

/// Records until the duration passes, the target ends, or Ctrl-C.
pub fn record(opts: &Options, stop: &Arc<AtomicBool>) -> Result<Profile> {
    let cpus = perf::online_cpus();
    let nr_cpus = cpus.iter().max().map_or(1, |m| m + 1);
    let mut child = None;
    let (scope, filter) = match &opts.target {
        Target::System => (Scope::AllTasks, None),
        Target::Pid(pid) => {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                bail!("no such process: {pid}");
            }
            (Scope::AllTasks, Some(*pid))
        }
        Target::Command(argv) => {
            let c = Child::spawn(argv)?;
            let pid = c.pid;
            child = Some(c);
            (Scope::ExecOf(pid), None)
        }
    };
    // On error the child (if any) exits when dropped.
    let mut rings = open_rings(scope, opts.freq)?;
    let mut state = State {
        kernel_map: new_map(opts.storage_size, nr_cpus, false)?,
        user_map: new_map(opts.storage_size, nr_cpus, opts.build_id)?,
        counts: HashMap::new(),
        ids: HashSet::new(),
        comms: HashMap::new(),
        maps: MapsTable::default(),
        build_id: opts.build_id,
        resolvers: Resolvers::default(),
        filter,
        samples: 0,
        lost: 0,
        missed: 0,
    };
    if let Some(pid) = filter {
        state.maps.ensure(pid);
    }
    let start = Instant::now();
    match (&mut child, &opts.target) {
        (Some(c), Target::Command(argv)) => c.go(&argv[0])?,
        _ => {
            for r in &rings {
                r.enable().map_err(|e| open_error(e, scope))?;
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
        let target_gone = match (&mut child, filter) {
            (Some(c), _) => c.try_wait(),
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
                state.ids.len(),
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
    let child_status = child.as_mut().and_then(|c| {
        c.stop();
        c.reaped
    });
    drop(rings);
    Ok(Profile {
        stacks: state.ids.len(),
        kernel_map: state.kernel_map,
        user_map: state.user_map,
        counts: state.counts,
        samples: state.samples,
        lost: state.lost,
        missed: state.missed,
        maps: state.maps,
        build_id: state.build_id,
        build_ids: state.resolvers.ids,
        elapsed,
        child_status,
    })
}

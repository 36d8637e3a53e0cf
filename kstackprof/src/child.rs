//! The launched command: forked, held until the events are open, run in a
//! process group of its own, and stopped as a whole.
//!
//! What `record -- CMD` does to the command (also in `--help`):
//! - CMD runs in a new process group. When kstackprof's standard input is
//!   the terminal and kstackprof is its foreground job, the terminal is
//!   handed to CMD's group while it runs (as a shell does), so Ctrl-C and
//!   Ctrl-Z reach the command, and taken back afterwards.
//! - At the `-d` deadline, or when kstackprof itself gets SIGINT/SIGTERM,
//!   the whole group gets SIGTERM; whatever is still alive after
//!   [`GRACE`] gets SIGKILL. kstackprof is a child subreaper
//!   (`PR_SET_CHILD_SUBREAPER`), so descendants that left the group
//!   (`setsid`, double forks) come back to it as orphans: they get the
//!   same signals. Nothing is left running and every child is reaped.
//! - When CMD ends by itself, processes it left in the background are not
//!   touched (a shell does not either).
//! - Exit status: CMD's own (128 + N when signal N ended it, as a shell
//!   reports it), or 0 when kstackprof stopped it at the `-d` deadline.

use std::ffi::{CString, OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Time between SIGTERM and SIGKILL when the command is stopped.
pub const GRACE: Duration = Duration::from_secs(2);

/// How the command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    /// The `waitpid` status of the command itself.
    pub status: i32,
    /// Whether kstackprof stopped it (deadline or its own SIGINT/SIGTERM).
    pub stopped: bool,
}

impl Ended {
    /// The exit code a shell would report for the command: its exit status,
    /// or 128 + the signal that ended it.
    pub fn shell_code(&self) -> u8 {
        if libc::WIFEXITED(self.status) {
            libc::WEXITSTATUS(self.status) as u8
        } else if libc::WIFSIGNALED(self.status) {
            128u8.wrapping_add(libc::WTERMSIG(self.status) as u8)
        } else {
            1
        }
    }
}

/// Finds `prog` the way `execvp` would, so that "command not found" is
/// reported before anything starts.
pub fn resolve_program(prog: &OsStr) -> Result<PathBuf> {
    let is_exec = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if prog.is_empty() {
        bail!("no command given");
    }
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

/// The terminal kstackprof handed to the command's group, to take back.
struct Terminal {
    fd: i32,
    our_pgrp: libc::pid_t,
}

impl Terminal {
    /// The terminal on stdin, if kstackprof is its foreground job.
    fn foreground() -> Option<Terminal> {
        let fd = libc::STDIN_FILENO;
        // SAFETY: isatty/tcgetpgrp/getpgrp take no pointers.
        let ours = unsafe { libc::isatty(fd) == 1 && libc::tcgetpgrp(fd) == libc::getpgrp() };
        // SAFETY: as above.
        ours.then(|| Terminal {
            fd,
            our_pgrp: unsafe { libc::getpgrp() },
        })
    }

    /// Makes `pgrp` the terminal's foreground group. A background group
    /// may do so only with SIGTTOU ignored (or it is stopped): we ignore
    /// it for the whole recording (set after the fork, so the command
    /// keeps the default).
    fn give(&self, pgrp: libc::pid_t) {
        // SAFETY: setting a signal disposition to SIG_IGN and calling
        // tcsetpgrp on a terminal fd we checked; both take no pointers.
        unsafe {
            libc::signal(libc::SIGTTOU, libc::SIG_IGN);
            libc::tcsetpgrp(self.fd, pgrp);
        }
    }

    fn take_back(&self) {
        self.give(self.our_pgrp);
    }
}

/// A command forked and waiting for the go-ahead before `execv`.
pub struct Child {
    /// Its pid, also its process group id.
    pub pid: libc::pid_t,
    go: Option<std::fs::File>,
    errors: std::fs::File,
    ended: Option<Ended>,
    terminal: Option<Terminal>,
}

impl Child {
    /// Forks `argv` into a new process group; it runs `execv` once
    /// [`Child::go`] is called.
    ///
    /// # Errors
    /// Command not found, not executable, fork or pipe failures.
    pub fn spawn(argv: &[OsString]) -> Result<Child> {
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
        // Orphaned descendants of the command come back to us, so that
        // none is left running when we stop it.
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        // SAFETY: fork in a process that has no other threads yet (recording
        // starts before any thread is spawned); the child only calls
        // async-signal-safe functions (setpgid, close, read, execv, write,
        // _exit).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            // SAFETY: see above; all pointers were prepared before the fork.
            unsafe {
                libc::setpgid(0, 0);
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
        // Also here, so the group exists whichever of us runs first.
        // SAFETY: our own child, which has not exec'd yet.
        unsafe { libc::setpgid(pid, pid) };
        drop(go_r);
        drop(err_w);
        Ok(Child {
            pid,
            go: Some(go_w),
            errors: err_r,
            ended: None,
            terminal: None,
        })
    }

    /// Lets the child exec; fails if the exec failed.
    ///
    /// # Errors
    /// The exec failed (the reason is the child's errno).
    pub fn go(&mut self, name: &OsStr) -> Result<()> {
        self.terminal = Terminal::foreground();
        if let Some(t) = &self.terminal {
            t.give(self.pid);
        }
        if let Some(mut go) = self.go.take() {
            go.write_all(&[1]).context("starting the command")?;
        }
        let mut buf = [0u8; 4];
        let n = self.errors.read(&mut buf).unwrap_or(0);
        if n == 4 {
            self.wait_blocking();
            let err = std::io::Error::from_raw_os_error(i32::from_ne_bytes(buf));
            bail!("cannot run {}: {err}", name.to_string_lossy());
        }
        Ok(())
    }

    /// How the command ended, once it has.
    pub fn ended(&self) -> Option<Ended> {
        self.ended
    }

    /// Reaps whatever children have ended (the command, and orphans that
    /// came back to us); true once the command itself has ended. A command
    /// stopped by Ctrl-Z stops kstackprof too, as a shell job would, and is
    /// resumed with it.
    pub fn poll(&mut self) -> bool {
        loop {
            let mut status = 0;
            // SAFETY: waiting on our own children.
            let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | libc::WUNTRACED) };
            if r <= 0 {
                break;
            }
            if r == self.pid {
                if libc::WIFSTOPPED(status) {
                    self.suspend_with_child();
                } else if self.ended.is_none() {
                    self.ended = Some(Ended {
                        status,
                        stopped: false,
                    });
                }
            }
        }
        if self.ended.is_none() {
            // The command may be gone already while waitpid(-1) found
            // nothing (ECHILD after another reaper): treat as ended.
            // SAFETY: kill with signal 0 only checks existence.
            if unsafe { libc::kill(self.pid, 0) } != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
            {
                self.ended = Some(Ended {
                    status: 0,
                    stopped: false,
                });
            }
        }
        self.ended.is_some()
    }

    /// Ctrl-Z stopped the command: take the terminal back, stop ourselves
    /// (the shell sees the job stopped); on `fg`, hand it back and resume
    /// the command's group.
    fn suspend_with_child(&mut self) {
        let Some(t) = &self.terminal else {
            return;
        };
        t.take_back();
        // SAFETY: signals to ourselves and to the command's group.
        unsafe {
            libc::kill(0, libc::SIGTSTP);
        }
        t.give(self.pid);
        // SAFETY: as above.
        unsafe {
            libc::kill(-self.pid, libc::SIGCONT);
        }
    }

    fn wait_blocking(&mut self) {
        if self.ended.is_none() {
            let mut status = 0;
            // SAFETY: waiting on our own child.
            unsafe { libc::waitpid(self.pid, &mut status, 0) };
            self.ended = Some(Ended {
                status,
                stopped: false,
            });
        }
    }

    /// Whether anything of the command is left: a process in its group, or
    /// an orphan that came back to us.
    fn anything_left(&self) -> bool {
        // SAFETY: signal 0 to a process group only checks existence.
        let group = unsafe { libc::kill(-self.pid, 0) } == 0;
        group || !orphans().is_empty()
    }

    fn signal_all(&self, sig: i32) {
        // SAFETY: signalling the command's own group and processes that
        // were reparented to us (our children).
        unsafe { libc::kill(-self.pid, sig) };
        for pid in orphans() {
            // SAFETY: as above.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// Stops the command's whole group (and orphans that came back to us):
    /// SIGTERM, then SIGKILL after [`GRACE`]; reaps everything.
    pub fn stop(&mut self) {
        if self.go.is_some() {
            // Never started: closing the go pipe makes it exit.
            self.go = None;
        }
        let ended_by_itself = self.poll();
        if !ended_by_itself {
            self.signal_all(libc::SIGTERM);
            // SIGCONT too, in case it is stopped (a stopped process only
            // sees SIGTERM once resumed).
            self.signal_all(libc::SIGCONT);
            let until = Instant::now() + GRACE;
            while Instant::now() < until {
                self.poll();
                if self.ended.is_some() && !self.anything_left() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if self.anything_left() {
                self.signal_all(libc::SIGKILL);
            }
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                self.poll();
                if self.ended.is_some() && !self.anything_left() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if let Some(e) = &mut self.ended {
                e.stopped = true;
            }
        }
        self.wait_blocking();
        if let Some(t) = self.terminal.take() {
            t.take_back();
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.ended.is_none() || self.terminal.is_some() {
            self.stop();
        }
    }
}

/// Processes whose parent is kstackprof: the command and orphans of it,
/// reparented to us (we are a subreaper). Zombies are left out (they are
/// reaped by [`Child::poll`]). Read from `/proc/self/task/*/children`.
fn orphans() -> Vec<libc::pid_t> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<libc::pid_t>>()
        })
        .filter(|pid| !is_zombie(*pid))
        .collect()
}

fn is_zombie(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // "pid (comm) S ...": comm may hold spaces and parens.
        stat.rfind(')')
            .and_then(|i| stat.get(i + 2..i + 3))
            .is_some_and(|state| state == "Z")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_codes() {
        let exited = |c: i32| Ended {
            status: c << 8,
            stopped: false,
        };
        assert_eq!(exited(3).shell_code(), 3);
        assert_eq!(exited(0).shell_code(), 0);
        let killed = Ended {
            status: libc::SIGKILL,
            stopped: false,
        };
        assert_eq!(killed.shell_code(), 137);
    }
}

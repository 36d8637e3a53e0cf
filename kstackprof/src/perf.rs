//! `perf_event_open` cpu-clock sampling and a small mmap ring-buffer reader.
//!
//! One event per CPU, each with its own ring of `1 + 2^n` pages: the first
//! page is `struct perf_event_mmap_page` (the `data_head` / `data_tail`
//! cursors), the rest the data area. The kernel writes records and then
//! publishes `data_head` (we load it, then fence Acquire, as
//! `tools/include/linux/ring_buffer.h` does); we parse up to it and hand
//! the space back by storing `data_tail` with Release, which pairs with
//! the kernel's read of `data_tail` before it overwrites. A full ring makes
//! the kernel drop samples and emit `PERF_RECORD_LOST` with the count.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU64, Ordering};

use perf_event_open_sys as sys;
use sys::bindings as b;

/// Samples: IP, TID, TIME and the callchain (kernel and user, with the
/// `PERF_CONTEXT_*` marker words exactly as perf delivers them).
const SAMPLE_TYPE: u64 =
    (b::PERF_SAMPLE_IP | b::PERF_SAMPLE_TID | b::PERF_SAMPLE_TIME | b::PERF_SAMPLE_CALLCHAIN)
        as u64;

/// Data pages per CPU ring (a power of two): 256 KiB holds well over a
/// second of samples at 1 kHz with 127-deep chains.
const DATA_PAGES: usize = 64;

/// What one event samples.
#[derive(Clone, Copy, Debug)]
pub struct EventSpec {
    /// `perf_event_open`'s pid: -1 for every task on the CPU (filtering is
    /// the caller's job, like BCC's `profile`), or a task id.
    pub pid: libc::pid_t,
    /// Follow the tasks `pid` creates after the event is opened (threads
    /// and processes); their samples go to the same ring.
    pub inherit: bool,
    /// Start counting at `pid`'s next `execve`.
    pub enable_on_exec: bool,
    /// User space only (`exclude_kernel`): what `perf_event_paranoid` 2
    /// allows an unprivileged user. Samples taken in the kernel are not
    /// taken at all, and callchains have no kernel part.
    pub user_only: bool,
    /// Samples per second.
    pub freq: u64,
}

/// One record parsed out of a ring.
#[derive(Debug)]
pub enum Record<'a> {
    /// `PERF_RECORD_SAMPLE`.
    Sample {
        /// Process id (tgid).
        pid: u32,
        /// Thread id.
        tid: u32,
        /// The callchain, innermost first, with marker words.
        callchain: &'a [u64],
    },
    /// `PERF_RECORD_LOST`: the ring was full and `lost` records were dropped.
    Lost { lost: u64 },
    /// `PERF_RECORD_COMM`: a thread's name changed (`exec` when `exec`
    /// is set: the process's old mappings are gone; or prctl).
    Comm {
        pid: u32,
        tid: u32,
        comm: &'a [u8],
        exec: bool,
    },
    /// `PERF_RECORD_MMAP2`: an executable mapping appeared.
    Mmap2 {
        pid: u32,
        addr: u64,
        len: u64,
        pgoff: u64,
        filename: &'a [u8],
    },
    /// `PERF_RECORD_FORK`: task `tid` of process `pid` was created by
    /// task `ptid` of process `ppid` (`pid == ppid` for a new thread).
    Fork {
        pid: u32,
        ppid: u32,
        tid: u32,
        ptid: u32,
    },
    /// `PERF_RECORD_THROTTLE`: the kernel stopped sampling this event for
    /// the rest of a tick (too many interrupts).
    Throttle,
    /// Anything else (EXIT, UNTHROTTLE, ...): ignored.
    Other,
}

/// One CPU's ring buffer, the event that owns it, and any further events
/// on the same CPU whose output was redirected into it
/// (`PERF_EVENT_IOC_SET_OUTPUT`; the kernel allows that between events of
/// one CPU).
pub struct Ring {
    fd: OwnedFd,
    /// Events writing into this ring besides `fd`.
    more: Vec<OwnedFd>,
    base: NonNull<u8>,
    map_len: usize,
    page: usize,
    data_size: u64,
    /// The CPU this ring samples.
    pub cpu: usize,
    /// 8-aligned copy of the record being parsed (records may wrap).
    scratch: Vec<u64>,
}

// SAFETY: the mapping is owned by the Ring and only touched through &mut self
// (and the kernel, through the documented head/tail protocol).
unsafe impl Send for Ring {}

/// Opens one cpu-clock sampling event (not mapped).
pub fn open_event(spec: &EventSpec, cpu: usize, disabled: bool) -> io::Result<OwnedFd> {
    // SAFETY: perf_event_attr is plain data; all-zero is its documented default.
    let mut attr: b::perf_event_attr = unsafe { std::mem::zeroed() };
    attr.type_ = b::PERF_TYPE_SOFTWARE;
    attr.size = std::mem::size_of::<b::perf_event_attr>() as u32;
    attr.config = b::PERF_COUNT_SW_CPU_CLOCK as u64;
    attr.__bindgen_anon_1.sample_freq = spec.freq;
    attr.set_freq(1);
    attr.sample_type = SAMPLE_TYPE;
    attr.sample_max_stack = kstackmap::uapi::PERF_MAX_STACK_DEPTH as u16;
    attr.set_comm(1);
    attr.set_comm_exec(1);
    attr.set_mmap(1);
    attr.set_mmap2(1);
    attr.set_task(1);
    attr.set_disabled(u64::from(disabled));
    attr.set_inherit(u64::from(spec.inherit));
    attr.set_enable_on_exec(u64::from(spec.enable_on_exec));
    if spec.user_only {
        attr.set_exclude_kernel(1);
        attr.set_exclude_hv(1);
        attr.set_exclude_callchain_kernel(1);
    }
    // Wake the reader once a quarter of the ring is full (the ring's size
    // is set at mmap time; this is only a hint).
    attr.set_watermark(1);
    attr.__bindgen_anon_2.wakeup_watermark = (DATA_PAGES * page_size() / 4) as u32;
    // SAFETY: attr is a valid, initialized perf_event_attr of the declared size.
    let fd = unsafe {
        sys::perf_event_open(
            &mut attr,
            spec.pid,
            cpu as i32,
            -1,
            b::PERF_FLAG_FD_CLOEXEC as _,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just handed us this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Ring {
    /// Opens a cpu-clock sampling event at `spec.freq` Hz on `cpu`
    /// (disabled: see [`Ring::enable`]) and maps its ring. When the
    /// locked-memory limit refuses [`DATA_PAGES`] pages, smaller rings
    /// are tried (down to 8 pages).
    pub fn open(spec: &EventSpec, cpu: usize) -> io::Result<Ring> {
        let fd = open_event(spec, cpu, true)?;
        let page = page_size();
        let mut pages = DATA_PAGES;
        let base = loop {
            let map_len = page * (1 + pages);
            // SAFETY: mapping a perf fd shared read-write is the documented
            // ring interface; the result is checked below.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    map_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    0,
                )
            };
            if base != libc::MAP_FAILED {
                break base;
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EPERM) && pages > 8 {
                pages /= 2;
                continue;
            }
            return Err(err);
        };
        let base = NonNull::new(base.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Ring {
            fd,
            more: Vec::new(),
            base,
            map_len: page * (1 + pages),
            page,
            data_size: (pages * page) as u64,
            cpu,
            scratch: Vec::new(),
        })
    }

    /// Opens one more event on this ring's CPU and sends its records
    /// into this ring. `enabled`: start sampling at once (for events added
    /// while recording).
    pub fn add(&mut self, spec: &EventSpec, enabled: bool) -> io::Result<()> {
        let fd = open_event(spec, self.cpu, !enabled)?;
        // SAFETY: two valid perf event fds of the same CPU; SET_OUTPUT
        // takes the target fd as its integer argument.
        if unsafe { sys::ioctls::SET_OUTPUT(fd.as_raw_fd(), self.fd.as_raw_fd()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        self.more.push(fd);
        Ok(())
    }

    /// The event's fd (for poll).
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Starts counting (events opened with `enable_on_exec` start by
    /// themselves).
    pub fn enable(&self) -> io::Result<()> {
        for fd in std::iter::once(&self.fd).chain(&self.more) {
            // SAFETY: a valid perf event fd; ENABLE takes no pointer.
            if unsafe { sys::ioctls::ENABLE(fd.as_raw_fd(), 0) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Stops counting; the ring can still be drained.
    pub fn disable(&self) {
        for fd in std::iter::once(&self.fd).chain(&self.more) {
            // SAFETY: a valid perf event fd; DISABLE takes no pointer.
            unsafe { sys::ioctls::DISABLE(fd.as_raw_fd(), 0) };
        }
    }

    fn cursor(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: data_head / data_tail are naturally aligned u64 fields of the
        // mmap page, which lives as long as self; the kernel accesses them
        // atomically too.
        unsafe { &*(self.base.as_ptr().add(offset).cast::<AtomicU64>()) }
    }

    /// Parses every record published so far and hands each to `f`.
    pub fn drain(&mut self, mut f: impl FnMut(Record<'_>)) {
        let head_off = std::mem::offset_of!(b::perf_event_mmap_page, data_head);
        let tail_off = std::mem::offset_of!(b::perf_event_mmap_page, data_tail);
        // Relaxed: ordered by the Acquire fence right after it.
        let head = self.cursor(head_off).load(Ordering::Relaxed);
        // Pairs with the kernel's smp_wmb() between writing records and
        // publishing data_head: the record bytes below are visible.
        fence(Ordering::Acquire);
        // Relaxed: data_tail is written only by us.
        let mut tail = self.cursor(tail_off).load(Ordering::Relaxed);
        let mut scratch = std::mem::take(&mut self.scratch);
        while tail < head {
            let size = self.header_size(tail);
            if size < 8 || tail + size as u64 > head {
                break;
            }
            scratch.clear();
            scratch.resize(size.div_ceil(8), 0);
            let bytes = as_bytes_mut(&mut scratch);
            self.copy_out(tail, &mut bytes[..size]);
            f(parse(&bytes[..size]));
            tail += size as u64;
        }
        self.scratch = scratch;
        // Release: our reads of the records happen before the kernel may
        // reuse the space (it reads data_tail before writing).
        self.cursor(tail_off).store(tail, Ordering::Release);
    }

    fn data(&self) -> *const u8 {
        // SAFETY: the data area starts one page into the mapping.
        unsafe { self.base.as_ptr().add(self.page) }
    }

    fn header_size(&self, pos: u64) -> usize {
        let off = (pos % self.data_size) as usize;
        // Headers are 8-aligned and the data area a multiple of 8, so a
        // header never wraps. SAFETY: off + 8 <= data_size, inside the mapping.
        let hdr = unsafe { std::ptr::read_unaligned(self.data().add(off).cast::<[u8; 8]>()) };
        u16::from_ne_bytes([hdr[6], hdr[7]]) as usize
    }

    fn copy_out(&self, pos: u64, out: &mut [u8]) {
        let size = out.len();
        let off = (pos % self.data_size) as usize;
        let first = size.min(self.data_size as usize - off);
        // SAFETY: both source ranges lie inside the data area (off + first <=
        // data_size, size - first <= data_size), which the kernel does not
        // rewrite before we advance data_tail; `out` is our own buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data().add(off), out.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(self.data(), out.as_mut_ptr().add(first), size - first);
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: base/map_len are the mapping created in open().
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.map_len) };
    }
}

fn rd_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn rd_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn cstr(b: &[u8]) -> &[u8] {
    b.split(|&c| c == 0).next().unwrap_or(b)
}

/// Parses one whole record (header included).
pub fn parse(rec: &[u8]) -> Record<'_> {
    parse_inner(rec).unwrap_or(Record::Other)
}

fn parse_inner(rec: &[u8]) -> Option<Record<'_>> {
    let ty = rd_u32(rec, 0)?;
    let misc = u16::from_ne_bytes(rec.get(4..6)?.try_into().ok()?);
    let body = rec.get(8..)?;
    Some(match ty {
        b::PERF_RECORD_SAMPLE => {
            // Layout for SAMPLE_TYPE: ip, pid/tid, time, nr, ips[nr].
            let pid = rd_u32(body, 8)?;
            let tid = rd_u32(body, 12)?;
            let nr = rd_u64(body, 24)? as usize;
            let bytes = body.get(32..32 + nr.checked_mul(8)?)?;
            // Records are 8-aligned in the ring, but our copy may not be.
            let callchain = bytemuck_u64(bytes)?;
            Record::Sample {
                pid,
                tid,
                callchain,
            }
        }
        b::PERF_RECORD_LOST => Record::Lost {
            lost: rd_u64(body, 8)?,
        },
        b::PERF_RECORD_COMM => Record::Comm {
            pid: rd_u32(body, 0)?,
            tid: rd_u32(body, 4)?,
            comm: cstr(body.get(8..)?),
            exec: u32::from(misc) & b::PERF_RECORD_MISC_COMM_EXEC != 0,
        },
        b::PERF_RECORD_MMAP2 => Record::Mmap2 {
            pid: rd_u32(body, 0)?,
            addr: rd_u64(body, 8)?,
            len: rd_u64(body, 16)?,
            pgoff: rd_u64(body, 24)?,
            // maj, min, ino, ino_generation (or the build id): 24 bytes;
            // then prot and flags.
            filename: cstr(body.get(64..)?),
        },
        b::PERF_RECORD_FORK => Record::Fork {
            pid: rd_u32(body, 0)?,
            ppid: rd_u32(body, 4)?,
            tid: rd_u32(body, 8)?,
            ptid: rd_u32(body, 12)?,
        },
        b::PERF_RECORD_THROTTLE => Record::Throttle,
        _ => Record::Other,
    })
}

fn bytemuck_u64(bytes: &[u8]) -> Option<&[u64]> {
    // SAFETY: align_to only yields the middle part where u64 alignment holds;
    // any bit pattern is a valid u64.
    let (pre, mid, post) = unsafe { bytes.align_to::<u64>() };
    (pre.is_empty() && post.is_empty()).then_some(mid)
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// The CPUs that are online, from `/sys/devices/system/cpu/online`
/// (`0-3,5`), or `0..nproc` when that file cannot be read.
pub fn online_cpus() -> Vec<usize> {
    let parsed = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_cpu_list(s.trim()));
    parsed.unwrap_or_else(|| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        (0..n).collect()
    })
}

fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().ok()?..=b.parse::<usize>().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// `kernel.perf_event_paranoid`, if readable.
pub fn paranoid_level() -> Option<i32> {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Waits until a ring has data (or `timeout_ms` passes, or a signal comes).
pub fn poll(rings: &[Ring], timeout_ms: i32) {
    let mut fds: Vec<libc::pollfd> = rings
        .iter()
        .map(|r| libc::pollfd {
            fd: r.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: fds is a valid array of fds.len() pollfd structs.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
}

/// Views a word buffer as bytes.
pub fn as_bytes_mut(w: &mut [u64]) -> &mut [u8] {
    // SAFETY: u8 has no alignment or validity requirements, and the byte
    // length is exactly the words' size.
    unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr().cast(), std::mem::size_of_val(w)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,5"), Some(vec![0, 1, 2, 3, 5]));
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn parses_lost_and_comm() {
        let mut w = [0u64; 4];
        w[0] = u64::from(b::PERF_RECORD_LOST) | (32u64 << 48);
        w[1] = 7; // id
        w[2] = 42; // lost
        match parse(&as_bytes_mut(&mut w)[..24]) {
            Record::Lost { lost } => assert_eq!(lost, 42),
            other => panic!("{other:?}"),
        }
        let mut w = [0u64; 4];
        w[0] = u64::from(b::PERF_RECORD_COMM) | (32u64 << 48);
        w[1] = 5 | (6 << 32); // pid, tid
        as_bytes_mut(&mut w)[16..21].copy_from_slice(b"perl\0");
        match parse(as_bytes_mut(&mut w)) {
            Record::Comm {
                pid,
                tid,
                comm,
                exec,
            } => assert_eq!((pid, tid, comm, exec), (5, 6, &b"perl"[..], false)),
            other => panic!("{other:?}"),
        }
        // A truncated record is skipped, not a panic.
        assert!(matches!(parse(&[9, 0, 0, 0]), Record::Other));
    }

    #[test]
    fn parses_a_sample() {
        let mut rec = Vec::new();
        rec.extend_from_slice(&b::PERF_RECORD_SAMPLE.to_ne_bytes());
        rec.extend_from_slice(&0u16.to_ne_bytes());
        rec.extend_from_slice(&((8 + 32 + 16) as u16).to_ne_bytes());
        rec.extend_from_slice(&0x1234u64.to_ne_bytes()); // ip
        rec.extend_from_slice(&7u32.to_ne_bytes()); // pid
        rec.extend_from_slice(&8u32.to_ne_bytes()); // tid
        rec.extend_from_slice(&99u64.to_ne_bytes()); // time
        rec.extend_from_slice(&2u64.to_ne_bytes()); // nr
        rec.extend_from_slice(&kstackmap::uapi::PERF_CONTEXT_KERNEL.to_ne_bytes());
        rec.extend_from_slice(&0xffff_ffff_8100_0000u64.to_ne_bytes());
        // Copy into 8-aligned storage, as the ring's scratch buffer is.
        let mut aligned = vec![0u64; rec.len() / 8];
        as_bytes_mut(&mut aligned).copy_from_slice(&rec);
        match parse(as_bytes_mut(&mut aligned)) {
            Record::Sample {
                pid,
                tid,
                callchain,
            } => {
                assert_eq!((pid, tid), (7, 8));
                assert_eq!(
                    callchain,
                    &[kstackmap::uapi::PERF_CONTEXT_KERNEL, 0xffff_ffff_8100_0000]
                );
            }
            other => panic!("{other:?}"),
        }
    }
}

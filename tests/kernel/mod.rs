//! The kernel side of the differential test: raw `bpf(2)` calls (no libbpf,
//! no aya, no prebuilt objects), a BPF program assembled here from
//! `bpf_insn`s, distinct user call paths built from `#[inline(never)]`
//! functions, and a small seeded PRNG.
//!
//! The program (a raw tracepoint on `sys_enter`) fires only for the thread
//! that armed it (full `pid_tgid` match) and only for `getppid`, the marker
//! syscall. It reads the `get_stackid` flags from its slot, then stores
//! `bpf_get_stack(ctx, buf, 127 * 8, BPF_F_USER_STACK)` (the raw user chain,
//! no skip) and `bpf_get_stackid(ctx, stackmap, flags)` into the slot, so
//! one program serves every flag combination for its map.

#![allow(dead_code)]

pub mod ours;
pub mod perf;
pub mod report;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};

// bpf(2) commands (include/uapi/linux/bpf.h).
const BPF_MAP_CREATE: i32 = 0;
const BPF_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_MAP_UPDATE_ELEM: i32 = 2;
const BPF_MAP_DELETE_ELEM: i32 = 3;
const BPF_MAP_GET_NEXT_KEY: i32 = 4;
pub const BPF_PROG_LOAD: i32 = 5;
const BPF_RAW_TRACEPOINT_OPEN: i32 = 17;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: i32 = 21;

/// `BPF_MAP_TYPE_ARRAY`.
pub const MAP_TYPE_ARRAY: u32 = 2;
/// `BPF_MAP_TYPE_STACK_TRACE`.
pub const MAP_TYPE_STACK_TRACE: u32 = 7;
const PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
/// `BPF_PROG_TYPE_PERF_EVENT`.
pub const PROG_TYPE_PERF_EVENT: u32 = 7;

// Helper ids.
pub const FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const FUNC_GET_CURRENT_PID_TGID: i32 = 14;
pub const FUNC_GET_STACKID: i32 = 27;
pub const FUNC_GET_STACK: i32 = 67;

/// Frames `bpf_get_stack` is asked for: the default `perf_event_max_stack`.
pub const CHAIN_MAX: usize = 127;
/// Bytes of the second `bpf_get_stack`'s buffer: 127 build-id frames.
pub const GS_BUF_MAX: usize = CHAIN_MAX * 32;
/// Slot layout (one array value): results, inputs, the raw chain, and the
/// buffer of the `bpf_get_stack` under test.
const SLOT_STACKID: usize = 0; // out: get_stackid's return
const SLOT_GETSTACK: usize = 8; // out: the raw get_stack's return
const SLOT_FLAGS: usize = 16; // in: get_stackid flags
const SLOT_GS_FLAGS: usize = 24; // in: flags of the get_stack under test
const SLOT_GS_SIZE: usize = 32; // in: its size (<= GS_BUF_MAX)
const SLOT_GS_RET: usize = 40; // out: its return
const SLOT_CHAIN: usize = 48; // out: the raw chain, CHAIN_MAX * 8 bytes
const SLOT_GS_BUF: usize = SLOT_CHAIN + CHAIN_MAX * 8; // out: GS_BUF_MAX bytes
const SLOT_SIZE: usize = SLOT_GS_BUF + GS_BUF_MAX;
/// Written before each trigger; a slot still holding it means the program
/// did not run.
const SENTINEL: i64 = 0x5EED_5EED;

/// A positive errno (`EINVAL` = 22).
pub type Errno = i32;

/// A map's contents in `get_next_key` order, `(id, lookup result)`, and
/// the errno that ended the walk (ENOENT at the end; EPERM on WRONLY).
pub type Dump = (Vec<(u32, Result<Vec<u8>, Errno>)>, Errno);

/// `bpf(cmd, attr, sizeof attr)`: the result, or the errno.
pub fn bpf(cmd: i32, attr: &mut [u64]) -> Result<i64, Errno> {
    // SAFETY: `attr` is a live, writable buffer of the size passed; the
    // kernel reads (and for some commands writes) at most that many bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r)
    }
}

/// Two u32 fields of a `union bpf_attr` packed in one u64 word.
pub fn pair(lo: u32, hi: u32) -> u64 {
    u64::from(lo) | (u64::from(hi) << 32)
}

/// The fd a successful object-creating `bpf()` call returned.
pub fn fd_from(r: i64) -> OwnedFd {
    // SAFETY: a successful bpf() call that creates an object returns a new
    // file descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(r as i32) }
}

/// Attributes of `BPF_MAP_CREATE` the tests vary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateAttr {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub numa_node: u32,
}

/// A kernel map, closed on drop.
pub struct Map {
    pub fd: OwnedFd,
    pub attr: CreateAttr,
}

impl Map {
    /// `BPF_MAP_CREATE`.
    pub fn create(a: CreateAttr) -> Result<Map, Errno> {
        // map_type, key_size, value_size, max_entries, map_flags,
        // inner_map_fd, numa_node, map_name[16]...
        let mut attr = [0u64; 8];
        attr[0] = pair(a.map_type, a.key_size);
        attr[1] = pair(a.value_size, a.max_entries);
        attr[2] = pair(a.map_flags, 0);
        attr[3] = pair(a.numa_node, 0);
        bpf(BPF_MAP_CREATE, &mut attr).map(|r| Map {
            fd: fd_from(r),
            attr: a,
        })
    }

    fn fd(&self) -> u64 {
        self.fd.as_raw_fd() as u64
    }

    fn elem(&self, cmd: i32, key: Option<&u32>, value: u64, flags: u64) -> Result<(), Errno> {
        let mut attr = [
            self.fd(),
            key.map_or(0, |k| k as *const u32 as u64),
            value,
            flags,
        ];
        bpf(cmd, &mut attr).map(|_| ())
    }

    /// `BPF_MAP_LOOKUP_ELEM`; `value` must hold `value_size` bytes.
    pub fn lookup(&self, key: u32, value: &mut [u8]) -> Result<(), Errno> {
        assert!(value.len() >= self.attr.value_size as usize);
        self.elem(
            BPF_MAP_LOOKUP_ELEM,
            Some(&key),
            value.as_mut_ptr() as u64,
            0,
        )
    }

    /// `BPF_MAP_LOOKUP_AND_DELETE_ELEM`.
    pub fn lookup_and_delete(&self, key: u32, value: &mut [u8]) -> Result<(), Errno> {
        assert!(value.len() >= self.attr.value_size as usize);
        self.elem(
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            Some(&key),
            value.as_mut_ptr() as u64,
            0,
        )
    }

    /// `BPF_MAP_UPDATE_ELEM`.
    pub fn update(&self, key: u32, value: &[u8], flags: u64) -> Result<(), Errno> {
        assert!(value.len() >= self.attr.value_size as usize);
        self.elem(
            BPF_MAP_UPDATE_ELEM,
            Some(&key),
            value.as_ptr() as u64,
            flags,
        )
    }

    /// `BPF_MAP_DELETE_ELEM`.
    pub fn delete(&self, key: u32) -> Result<(), Errno> {
        self.elem(BPF_MAP_DELETE_ELEM, Some(&key), 0, 0)
    }

    /// `BPF_MAP_GET_NEXT_KEY` (`None`: from the start).
    pub fn get_next_key(&self, key: Option<u32>) -> Result<u32, Errno> {
        let mut next = 0u32;
        self.elem(
            BPF_MAP_GET_NEXT_KEY,
            key.as_ref(),
            &mut next as *mut u32 as u64,
            0,
        )?;
        Ok(next)
    }

    /// Every `(id, value)` in `get_next_key` order, and the errno that
    /// ended the walk (ENOENT at the end; EPERM on a write-only map).
    pub fn dump(&self) -> Dump {
        dump_by(
            self.attr.value_size as usize,
            |k| self.get_next_key(k),
            |id, v| self.lookup(id, v),
        )
    }

    /// The `memlock:` line of `/proc/self/fdinfo/FD` (the map's mem usage).
    pub fn fdinfo_memlock(&self) -> Option<u64> {
        let s =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", self.fd.as_raw_fd())).ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// A map's [`Dump`] through its `get_next_key` and `lookup` (values of
/// `value_size` bytes).
pub fn dump_by(
    value_size: usize,
    mut next_key: impl FnMut(Option<u32>) -> Result<u32, Errno>,
    mut lookup: impl FnMut(u32, &mut [u8]) -> Result<(), Errno>,
) -> Dump {
    let mut out = Vec::new();
    let mut key = None;
    loop {
        match next_key(key) {
            Ok(id) => {
                let mut v = vec![0u8; value_size];
                let r = lookup(id, &mut v).map(|()| v);
                out.push((id, r));
                key = Some(id);
                assert!(out.len() <= 1 << 22, "get_next_key does not end");
            }
            Err(e) => return (out, e),
        }
    }
}

/// `kernel.perf_event_max_stack`.
pub fn sysctl_max_stack() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_max_stack")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(127)
}

/// Why the kernel side cannot run here, if it cannot: a tiny valid stack
/// map is refused with EPERM / ENOSYS / EACCES (no CAP_BPF, BPF disabled).
pub fn unavailable() -> Option<String> {
    match Map::create(CreateAttr {
        map_type: MAP_TYPE_STACK_TRACE,
        key_size: 4,
        value_size: 8,
        max_entries: 1,
        map_flags: 0,
        numa_node: 0,
    }) {
        Ok(_) => None,
        Err(e @ (libc::EPERM | libc::ENOSYS | libc::EACCES)) => Some(format!(
            "BPF_MAP_CREATE of a 1-entry stack trace map failed: {}",
            io::Error::from_raw_os_error(e)
        )),
        Err(e) => panic!(
            "BPF_MAP_CREATE of a 1-entry stack trace map: unexpected {}",
            io::Error::from_raw_os_error(e)
        ),
    }
}

// --- the BPF program -------------------------------------------------------

pub const BPF_LD: u8 = 0x00;
pub const BPF_LDX: u8 = 0x01;
pub const BPF_ST: u8 = 0x02;
pub const BPF_STX: u8 = 0x03;
pub const BPF_JMP: u8 = 0x05;
pub const BPF_ALU64: u8 = 0x07;
pub const BPF_W: u8 = 0x00;
pub const BPF_DW: u8 = 0x18;
pub const BPF_IMM: u8 = 0x00;
pub const BPF_MEM: u8 = 0x60;
pub const BPF_K: u8 = 0x00;
pub const BPF_X: u8 = 0x08;
pub const BPF_ADD: u8 = 0x00;
pub const BPF_MOV: u8 = 0xb0;
pub const BPF_JEQ: u8 = 0x10;
pub const BPF_JNE: u8 = 0x50;
pub const BPF_JGT: u8 = 0x20;
pub const BPF_CALL: u8 = 0x80;
pub const BPF_EXIT: u8 = 0x90;
pub const BPF_PSEUDO_MAP_FD: u8 = 1;

/// One `struct bpf_insn`, little-endian packed into a u64.
pub fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | (u64::from(dst & 0xf) << 8)
        | (u64::from(src & 0xf) << 12)
        | (u64::from(off as u16) << 16)
        | (u64::from(imm as u32) << 32)
}

pub fn ld_imm64(dst: u8, src: u8, imm: u64) -> [u64; 2] {
    [
        insn(BPF_LD | BPF_DW | BPF_IMM, dst, src, 0, imm as u32 as i32),
        insn(0, 0, 0, 0, (imm >> 32) as u32 as i32),
    ]
}

/// This thread's `bpf_get_current_pid_tgid()`.
pub fn current_pid_tgid() -> u64 {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    (u64::from(std::process::id()) << 32) | u64::from(tid)
}

fn program(slot_fd: i32, stack_fd: i32, pid_tgid: u64) -> Vec<u64> {
    let mut p: Vec<u64> = Vec::new();
    let mut exits = Vec::new();
    p.push(insn(BPF_ALU64 | BPF_MOV | BPF_X, 6, 1, 0, 0)); // r6 = ctx
    p.push(insn(BPF_LDX | BPF_MEM | BPF_DW, 2, 6, 8, 0)); // r2 = args[1]: syscall nr
    exits.push(p.len());
    p.push(insn(
        BPF_JMP | BPF_JNE | BPF_K,
        2,
        0,
        0,
        libc::SYS_getppid as i32,
    ));
    p.push(insn(BPF_JMP | BPF_CALL, 0, 0, 0, FUNC_GET_CURRENT_PID_TGID));
    p.extend(ld_imm64(1, 0, pid_tgid));
    exits.push(p.len());
    p.push(insn(BPF_JMP | BPF_JNE | BPF_X, 0, 1, 0, 0));
    p.push(insn(BPF_ST | BPF_MEM | BPF_W, 10, 0, -4, 0)); // key = 0
    p.push(insn(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0));
    p.push(insn(BPF_ALU64 | BPF_ADD | BPF_K, 2, 0, 0, -4));
    p.extend(ld_imm64(1, BPF_PSEUDO_MAP_FD, slot_fd as u64));
    p.push(insn(BPF_JMP | BPF_CALL, 0, 0, 0, FUNC_MAP_LOOKUP_ELEM));
    exits.push(p.len());
    p.push(insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 0, 0));
    // r7 = slot
    p.push(insn(BPF_ALU64 | BPF_MOV | BPF_X, 7, 0, 0, 0));
    // slot->raw_ret = bpf_get_stack(ctx, slot->chain, CHAIN_MAX * 8, USER_STACK)
    p.push(insn(BPF_ALU64 | BPF_MOV | BPF_X, 1, 6, 0, 0));
    p.push(insn(BPF_ALU64 | BPF_MOV | BPF_X, 2, 7, 0, 0));
    p.push(insn(
        BPF_ALU64 | BPF_ADD | BPF_K,
        2,
        0,
        0,
        SLOT_CHAIN as i32,
    ));
    p.push(insn(
        BPF_ALU64 | BPF_MOV | BPF_K,
        3,
        0,
        0,
        (CHAIN_MAX * 8) as i32,
    ));
    let user = kstackmap::uapi::BPF_F_USER_STACK as i32;
    p.push(insn(BPF_ALU64 | BPF_MOV | BPF_K, 4, 0, 0, user));
    p.push(insn(BPF_JMP | BPF_CALL, 0, 0, 0, FUNC_GET_STACK));
    p.push(insn(
        BPF_STX | BPF_MEM | BPF_DW,
        7,
        0,
        SLOT_GETSTACK as i16,
        0,
    ));
    // slot->stackid = bpf_get_stackid(ctx, stackmap, slot->flags)
    p.push(insn(BPF_ALU64 | BPF_MOV | BPF_X, 1, 6, 0, 0));
    p.extend(ld_imm64(2, BPF_PSEUDO_MAP_FD, stack_fd as u64));
    p.push(insn(BPF_LDX | BPF_MEM | BPF_DW, 3, 7, SLOT_FLAGS as i16, 0));
    p.push(insn(BPF_JMP | BPF_CALL, 0, 0, 0, FUNC_GET_STACKID));
    p.push(insn(
        BPF_STX | BPF_MEM | BPF_DW,
        7,
        0,
        SLOT_STACKID as i16,
        0,
    ));
    // slot->gs_ret = bpf_get_stack(ctx, slot->gs_buf, slot->gs_size, slot->gs_flags)
    p.push(insn(BPF_ALU64 | BPF_MOV | BPF_X, 1, 6, 0, 0));
    p.push(insn(BPF_ALU64 | BPF_MOV | BPF_X, 2, 7, 0, 0));
    p.push(insn(
        BPF_ALU64 | BPF_ADD | BPF_K,
        2,
        0,
        0,
        SLOT_GS_BUF as i32,
    ));
    p.push(insn(
        BPF_LDX | BPF_MEM | BPF_DW,
        3,
        7,
        SLOT_GS_SIZE as i16,
        0,
    ));
    exits.push(p.len());
    p.push(insn(BPF_JMP | BPF_JGT | BPF_K, 3, 0, 0, GS_BUF_MAX as i32));
    p.push(insn(
        BPF_LDX | BPF_MEM | BPF_DW,
        4,
        7,
        SLOT_GS_FLAGS as i16,
        0,
    ));
    p.push(insn(BPF_JMP | BPF_CALL, 0, 0, 0, FUNC_GET_STACK));
    p.push(insn(
        BPF_STX | BPF_MEM | BPF_DW,
        7,
        0,
        SLOT_GS_RET as i16,
        0,
    ));
    let out = p.len();
    p.push(insn(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 0));
    p.push(insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0));
    for j in exits {
        let off = (out - j - 1) as i16;
        p[j] = (p[j] & !(0xffff << 16)) | (u64::from(off as u16) << 16);
    }
    p
}

/// `BPF_PROG_LOAD` of a GPL program of `prog_type`; on failure the errno
/// and the verifier's log.
pub fn load_program(prog_type: u32, insns: &[u64]) -> Result<OwnedFd, (Errno, String)> {
    let license = CString::new("GPL").unwrap();
    let mut log = vec![0u8; 1 << 20];
    // prog_type, insn_cnt, insns, license, log_level, log_size, log_buf
    let mut attr = [0u64; 8];
    attr[0] = pair(prog_type, insns.len() as u32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[3] = pair(1, log.len() as u32);
    attr[4] = log.as_mut_ptr() as u64;
    bpf(BPF_PROG_LOAD, &mut attr).map(fd_from).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        (e, String::from_utf8_lossy(&log[..end]).into_owned())
    })
}

/// What one trigger recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    /// `bpf_get_stackid`'s return: an id or `-errno`.
    pub stackid: i64,
    /// `bpf_get_stack`'s return: bytes copied or `-errno`.
    pub get_stack: i64,
    /// The raw user chain (`get_stack / 8` ips).
    pub chain: Vec<u64>,
    /// The `bpf_get_stack` under test: its return (bytes or `-errno`) and
    /// its whole buffer (`size` bytes).
    pub gs_ret: i64,
    pub gs_buf: Vec<u8>,
}

/// The `bpf_get_stack` call under test in a capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetStack {
    pub flags: u64,
    /// Buffer size in bytes, at most [`GS_BUF_MAX`].
    pub size: usize,
}

/// A stack map with the probe program attached for the creating thread.
pub struct Probe {
    pub stack: Map,
    slot: Map,
    _prog: OwnedFd,
    _link: OwnedFd,
    pid_tgid: u64,
}

impl Probe {
    /// Loads and attaches the program for `stack` (the calling thread only).
    pub fn attach(stack: Map) -> Probe {
        let slot = Map::create(CreateAttr {
            map_type: MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: SLOT_SIZE as u32,
            max_entries: 1,
            map_flags: 0,
            numa_node: 0,
        })
        .expect("array map for the probe's slot");
        let pid_tgid = current_pid_tgid();
        let insns = program(slot.fd.as_raw_fd(), stack.fd.as_raw_fd(), pid_tgid);
        let prog = load_program(PROG_TYPE_RAW_TRACEPOINT, &insns).unwrap_or_else(|(e, log)| {
            panic!(
                "BPF_PROG_LOAD: {}\nverifier log:\n{log}",
                io::Error::from_raw_os_error(e)
            )
        });
        let name = CString::new("sys_enter").unwrap();
        let mut attr = [name.as_ptr() as u64, pair(prog.as_raw_fd() as u32, 0), 0];
        let link = bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr)
            .map(fd_from)
            .unwrap_or_else(|e| {
                panic!(
                    "BPF_RAW_TRACEPOINT_OPEN sys_enter: {}",
                    io::Error::from_raw_os_error(e)
                )
            });
        Probe {
            stack,
            slot,
            _prog: prog,
            _link: link,
            pid_tgid,
        }
    }

    /// Arms the slot with `flags`, calls `getppid` through `path`, and
    /// returns what the program saw.
    pub fn capture(&self, path: &[u8], flags: u64, gs: GetStack) -> Capture {
        assert!(gs.size <= GS_BUF_MAX);
        assert_eq!(
            current_pid_tgid(),
            self.pid_tgid,
            "a probe fires only on the thread that attached it"
        );
        let mut slot = vec![0u8; SLOT_SIZE];
        slot[SLOT_STACKID..SLOT_STACKID + 8].copy_from_slice(&SENTINEL.to_ne_bytes());
        slot[SLOT_GETSTACK..SLOT_GETSTACK + 8].copy_from_slice(&SENTINEL.to_ne_bytes());
        slot[SLOT_FLAGS..SLOT_FLAGS + 8].copy_from_slice(&flags.to_ne_bytes());
        slot[SLOT_GS_FLAGS..SLOT_GS_FLAGS + 8].copy_from_slice(&gs.flags.to_ne_bytes());
        slot[SLOT_GS_SIZE..SLOT_GS_SIZE + 8].copy_from_slice(&(gs.size as u64).to_ne_bytes());
        slot[SLOT_GS_RET..SLOT_GS_RET + 8].copy_from_slice(&SENTINEL.to_ne_bytes());
        // A non-zero pattern, so that the kernel's zeroing shows.
        slot[SLOT_GS_BUF..].fill(0xa5);
        self.slot.update(0, &slot, 0).expect("arm the probe slot");
        call_path(path);
        self.slot.lookup(0, &mut slot).expect("read the probe slot");
        let word = |at: usize| i64::from_ne_bytes(slot[at..at + 8].try_into().unwrap());
        let stackid = word(SLOT_STACKID);
        let get_stack = word(SLOT_GETSTACK);
        let gs_ret = word(SLOT_GS_RET);
        assert!(
            stackid != SENTINEL && get_stack != SENTINEL && gs_ret != SENTINEL,
            "the probe did not fire for getppid on this thread"
        );
        let n = if get_stack > 0 {
            get_stack as usize / 8
        } else {
            0
        };
        assert!(n <= CHAIN_MAX, "get_stack returned {get_stack}");
        let chain = (0..n)
            .map(|i| u64::from_ne_bytes(slot[SLOT_CHAIN + 8 * i..][..8].try_into().unwrap()))
            .collect();
        Capture {
            stackid,
            get_stack,
            chain,
            gs_ret,
            gs_buf: slot[SLOT_GS_BUF..SLOT_GS_BUF + gs.size].to_vec(),
        }
    }
}

// --- distinct call paths ---------------------------------------------------

static SINK: AtomicUsize = AtomicUsize::new(0);

/// Calls the marker syscall through a chain of frames chosen by `path`
/// (each byte picks one of five callers), so distinct paths leave distinct
/// frame-pointer chains. Bytes 3 and 4 go through a small machine-code
/// stub in an anonymous executable mapping and in a file-backed one whose
/// file is no ELF: frames with no build id (status IP in build-id maps).
/// Bytes `5 + k` go through a stub that links a fake frame into the chain
/// whose return address is [`fake_ips`]`()[k]`: an ip in no mapping, in a
/// gap below a mapping, in the kernel's half, ... (see there).
#[inline(never)]
pub fn call_path(path: &[u8]) {
    step(std::hint::black_box(path), trigger);
}

/// [`call_path`], calling `leaf` at the end of the path instead of the
/// marker syscall.
#[inline(never)]
pub fn call_path_to(path: &[u8], leaf: fn()) {
    step(std::hint::black_box(path), leaf);
}

#[inline(never)]
fn step(path: &[u8], leaf: fn()) {
    match path.split_first() {
        None => leaf(),
        Some((c, rest)) => match c {
            0 => fa(rest, leaf),
            1 => fb(rest, leaf),
            2 => fc(rest, leaf),
            3 => via_stub(stubs().anon, rest, leaf),
            4 => via_stub(stubs().file, rest, leaf),
            _ => via_fake_frame(stubs(), usize::from(c - 5), rest, leaf),
        },
    }
}

/// Whether paths may use bytes 3 and up (the machine-code stubs): x86-64
/// only. Elsewhere those bytes fall back to plain functions, so two paths
/// could give one chain.
pub const HAS_STUBS: bool = cfg!(target_arch = "x86_64");

/// x86-64 machine code of `stub(target, arg)`: sets up a frame-pointer
/// frame and calls `target(arg)`:
/// `push rbp; mov rbp, rsp; mov rax, rdi; mov rdi, rsi; call rax; pop rbp; ret`.
#[cfg(target_arch = "x86_64")]
const STUB_CODE: [u8; 14] = [
    0x55, 0x48, 0x89, 0xe5, 0x48, 0x89, 0xf8, 0x48, 0x89, 0xf7, 0xff, 0xd0, 0x5d, 0xc3,
];

/// `fake(target, arg, ip)`: as [`STUB_CODE`], but with a fake frame
/// `{ next: the stub's own frame, return address: ip }` linked in between,
/// so a frame-pointer walk records `ip`:
/// `push rbp; mov rbp, rsp; push rdx; push rbp; mov rax, rdi;
/// mov rdi, rsi; mov rbp, rsp; call rax; add rsp, 16; pop rbp; ret`.
#[cfg(target_arch = "x86_64")]
const FAKE_FRAME_CODE: [u8; 26] = [
    0x55, 0x48, 0x89, 0xe5, 0x52, 0x55, 0x48, 0x89, 0xf8, 0x48, 0x89, 0xf7, 0x48, 0x89, 0xe5, 0xff,
    0xd0, 0x48, 0x83, 0xc4, 0x10, 0x5d, 0xc3, 0xcc, 0xcc, 0xcc,
];
/// Where `FAKE_FRAME_CODE` sits in the anonymous stub page.
const FAKE_FRAME_AT: usize = 64;

type StubFn = unsafe extern "C" fn(extern "C" fn(*const Rest), *const Rest);
type FakeFn = unsafe extern "C" fn(extern "C" fn(*const Rest), *const Rest, u64);

/// The rest of a path and its leaf, passed through a stub.
struct Rest<'a>(&'a [u8], fn());

/// The stubs' entry points (0 where there is no stub: other arches).
struct Stubs {
    anon: usize,
    file: usize,
    fake_ips: Vec<u64>,
}

fn stubs() -> &'static Stubs {
    static STUBS: std::sync::OnceLock<Stubs> = std::sync::OnceLock::new();
    STUBS.get_or_init(|| {
        let anon = map_stub(None);
        let file = map_stub(Some(()));
        Stubs {
            anon,
            file,
            fake_ips: make_fake_ips(anon),
        }
    })
}

/// The return addresses fake frames put in chains: ips no real call
/// leaves, for the build-id resolution's edge cases (`find_vma` gives the
/// first mapping ending above the ip, which need not contain it; the file
/// offset then wraps).
pub fn fake_ips() -> &'static [u64] {
    &stubs().fake_ips
}

fn make_fake_ips(anon: usize) -> Vec<u64> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let ranges: Vec<(u64, u64, bool)> = maps
        .lines()
        .filter_map(|l| {
            let (range, rest) = l.split_once(' ')?;
            let (a, b) = range.split_once('-')?;
            let file = rest
                .split_whitespace()
                .nth(4)
                .is_some_and(|p| p.starts_with('/'));
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
                file,
            ))
        })
        .collect();
    let first = ranges.first().map_or(0x1000, |r| r.0);
    // The first file mapping that starts above a gap: an ip just below it
    // resolves (find_vma) to that file at a "negative" offset.
    let below_file = ranges
        .windows(2)
        .find(|w| w[1].2 && w[0].1 < w[1].0)
        .map_or(first, |w| w[1].0);
    let last_user = ranges
        .iter()
        .filter(|r| r.1 < 1 << 47)
        .map(|r| r.1)
        .max()
        .unwrap_or(1 << 46);
    vec![
        0,
        1,
        first.wrapping_sub(0x10),   // below every mapping: the first one
        below_file.wrapping_sub(8), // in a gap, below a file mapping
        anon as u64 + 3,            // inside the anonymous stub page
        last_user + 0x1000,         // above the last user mapping: none
        0xffff_ffff_8100_0000,      // a kernel address
        u64::MAX,
    ]
}

/// Maps a page holding the stub: anonymous, or (with `file`) from a
/// temporary file that is not an ELF (removed once mapped).
#[cfg(target_arch = "x86_64")]
fn map_stub(file: Option<()>) -> usize {
    use std::io::Write;
    let page = 4096;
    let mut code = vec![0xcc_u8; page]; // int3 around the stubs
    code[..STUB_CODE.len()].copy_from_slice(&STUB_CODE);
    code[FAKE_FRAME_AT..FAKE_FRAME_AT + FAKE_FRAME_CODE.len()].copy_from_slice(&FAKE_FRAME_CODE);
    let addr = match file {
        None => {
            // SAFETY: a fresh private anonymous mapping; nothing aliases it.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    page,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert!(
                p != libc::MAP_FAILED,
                "mmap: {}",
                io::Error::last_os_error()
            );
            // SAFETY: `p` is a writable mapping of `page` bytes.
            unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), p.cast::<u8>(), page) };
            // SAFETY: `p` is the start of the mapping made above.
            let r = unsafe { libc::mprotect(p, page, libc::PROT_READ | libc::PROT_EXEC) };
            assert_eq!(r, 0, "mprotect: {}", io::Error::last_os_error());
            p
        }
        Some(()) => {
            let path = std::env::temp_dir().join(format!("kdiff-stub-{}", std::process::id()));
            let mut f = std::fs::File::create(&path).expect("create the stub file");
            f.write_all(&code).expect("write the stub file");
            drop(f);
            let f = std::fs::File::open(&path).expect("open the stub file");
            // SAFETY: maps `page` bytes of a file we own, read + exec.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    page,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE,
                    f.as_raw_fd(),
                    0,
                )
            };
            assert!(
                p != libc::MAP_FAILED,
                "mmap: {}",
                io::Error::last_os_error()
            );
            let _ = std::fs::remove_file(&path);
            p
        }
    };
    addr as usize
}

#[cfg(not(target_arch = "x86_64"))]
fn map_stub(_file: Option<()>) -> usize {
    0
}

extern "C" fn stub_target(rest: *const Rest) {
    // SAFETY: `rest` points to the `Rest` on the frame of `via_stub` or
    // `via_fake_frame`, which outlives this call.
    let (path, leaf) = unsafe { ((*rest).0, (*rest).1) };
    step(path, leaf);
}

#[inline(never)]
fn via_fake_frame(stubs: &Stubs, k: usize, rest: &[u8], leaf: fn()) {
    let (Some(&ip), true) = (stubs.fake_ips.get(k), stubs.anon != 0) else {
        return fb(rest, leaf);
    };
    let r = Rest(rest, leaf);
    // SAFETY: `anon + FAKE_FRAME_AT` is the entry of FAKE_FRAME_CODE, mapped
    // executable; it follows the C calling convention, restores rbp and
    // rsp, and calls `stub_target(&r)` once.
    unsafe {
        let f: FakeFn = std::mem::transmute::<usize, FakeFn>(stubs.anon + FAKE_FRAME_AT);
        f(stub_target, &r, ip);
    }
    SINK.fetch_add(5, Ordering::Relaxed);
}

#[inline(never)]
fn via_stub(stub: usize, rest: &[u8], leaf: fn()) {
    if stub == 0 {
        return fa(rest, leaf);
    }
    let r = Rest(rest, leaf);
    // SAFETY: `stub` is the entry of STUB_CODE, mapped executable, which
    // follows the C calling convention and calls `target(&r)` once.
    unsafe {
        let f: StubFn = std::mem::transmute::<usize, StubFn>(stub);
        f(stub_target, &r);
    }
    SINK.fetch_add(4, Ordering::Relaxed);
}

#[inline(never)]
fn fa(path: &[u8], leaf: fn()) {
    step(path, leaf);
    SINK.fetch_add(1, Ordering::Relaxed);
}

#[inline(never)]
fn fb(path: &[u8], leaf: fn()) {
    step(path, leaf);
    SINK.fetch_add(2, Ordering::Relaxed);
}

#[inline(never)]
fn fc(path: &[u8], leaf: fn()) {
    step(path, leaf);
    SINK.fetch_add(3, Ordering::Relaxed);
}

#[inline(never)]
fn trigger() {
    // SAFETY: getppid has no preconditions and cannot fail.
    let ppid = unsafe { libc::syscall(libc::SYS_getppid) };
    SINK.fetch_add(std::hint::black_box(ppid) as usize & 1, Ordering::Relaxed);
}

// --- a small seeded PRNG (no timing anywhere) ------------------------------

/// SplitMix64: tiny, seedable, good enough to pick test cases.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next_u64() % den < num
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.range(0, xs.len() as u64) as usize]
    }
}

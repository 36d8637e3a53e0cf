//! The perf side of the `_pe` differential test (`tests/kernel_diff_pe.rs`):
//! a sampling event on the calling thread with `PERF_SAMPLE_CALLCHAIN`, its
//! mmap ring, and a `BPF_PROG_TYPE_PERF_EVENT` program attached to it with
//! `PERF_EVENT_IOC_SET_BPF`.
//!
//! The program runs a *plan*: sample `i` (counted by the program in a
//! one-word array) gets slot `i` of an array map, which user space filled
//! beforehand with up to [`OPS`] operations, each `bpf_get_stackid` on one
//! of the stack maps or `bpf_get_stack` into the slot's buffer, with flags
//! (and size) chosen by the test. For a program of this type on an event
//! that samples callchains the kernel's `_pe` helpers run on the sample's
//! own callchain (`ctx->data->callchain`), the one the ring's
//! `PERF_RECORD_SAMPLE` then carries (as the program left it: see
//! `parse_sample`). The program stores each result and
//! the sampled `regs->ip` (to check that ring sample `i` is slot `i`), and
//! returns 1 (0 would drop the sample from the ring); past the last slot it
//! returns 0, so the ring holds exactly the samples that have a slot.

use super::{
    insn, ld_imm64, load_program, CreateAttr, Errno, Map, BPF_ALU64, BPF_CALL, BPF_DW, BPF_EXIT,
    BPF_JEQ, BPF_JGT, BPF_JMP, BPF_K, BPF_LDX, BPF_MEM, BPF_MOV, BPF_PSEUDO_MAP_FD, BPF_ST,
    BPF_STX, BPF_W, BPF_X, FUNC_GET_STACK, FUNC_GET_STACKID, FUNC_MAP_LOOKUP_ELEM, MAP_TYPE_ARRAY,
    PROG_TYPE_PERF_EVENT,
};
use perf_event_open_sys as sys;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use sys::bindings as b;

// --- the event and its ring ----------------------------------------------------

/// What the event counts; it samples every `period` of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `PERF_COUNT_SW_CPU_CLOCK` (hrtimer interrupt; period in ns).
    CpuClock,
    /// `PERF_COUNT_SW_TASK_CLOCK` (hrtimer interrupt; period in ns).
    TaskClock,
    /// `PERF_COUNT_SW_PAGE_FAULTS` (the fault handler, interrupts on).
    PageFaults,
    /// `PERF_COUNT_HW_CPU_CYCLES` (NMI), where the machine has a PMU.
    Cycles,
}

/// The attributes of a sampling event the tests vary.
#[derive(Clone, Copy, Debug)]
pub struct EventSpec {
    pub source: Source,
    pub period: u64,
    /// `sample_max_stack`: ips in a callchain (markers not counted).
    pub sample_max_stack: u16,
    pub exclude_callchain_kernel: bool,
    pub exclude_callchain_user: bool,
    /// Samples only in user mode (`exclude_kernel`).
    pub exclude_kernel: bool,
}

/// `PERF_SAMPLE_*` of every sample: ip, pid/tid, time, cpu, callchain.
const SAMPLE_TYPE: u64 = (b::PERF_SAMPLE_IP
    | b::PERF_SAMPLE_TID
    | b::PERF_SAMPLE_TIME
    | b::PERF_SAMPLE_CPU
    | b::PERF_SAMPLE_CALLCHAIN) as u64;

/// One `PERF_RECORD_SAMPLE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub ip: u64,
    pub pid: u32,
    pub tid: u32,
    pub time: u64,
    pub cpu: u32,
    /// The callchain, `PERF_CONTEXT_*` markers included, as perf wrote it.
    pub chain: Vec<u64>,
    /// The callchain's length when perf prepared the sample (from the
    /// record's size), before the program ran.
    pub prepared_nr: usize,
}

/// What a ring held.
#[derive(Debug, Default)]
pub struct RingContents {
    pub samples: Vec<Sample>,
    /// Records the kernel dropped (`PERF_RECORD_LOST`): the ring was full.
    pub lost: u64,
    /// `PERF_RECORD_THROTTLE` records.
    pub throttled: u64,
}

/// A sampling event on the calling thread, with its ring mapped.
pub struct Event {
    fd: OwnedFd,
    base: *mut u8,
    map_len: usize,
    page: usize,
    data_size: usize,
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).unwrap_or(4096)
}

fn last_errno() -> Errno {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl Event {
    /// `perf_event_open` of `spec` for this thread, disabled, and a ring of
    /// `data_pages` pages (a power of two).
    pub fn open(spec: &EventSpec, data_pages: usize) -> Result<Event, Errno> {
        assert!(data_pages.is_power_of_two());
        // SAFETY: perf_event_attr is plain data; all-zero is its default.
        let mut attr: b::perf_event_attr = unsafe { std::mem::zeroed() };
        attr.size = std::mem::size_of::<b::perf_event_attr>() as u32;
        (attr.type_, attr.config) = match spec.source {
            Source::CpuClock => (b::PERF_TYPE_SOFTWARE, b::PERF_COUNT_SW_CPU_CLOCK as u64),
            Source::TaskClock => (b::PERF_TYPE_SOFTWARE, b::PERF_COUNT_SW_TASK_CLOCK as u64),
            Source::PageFaults => (b::PERF_TYPE_SOFTWARE, b::PERF_COUNT_SW_PAGE_FAULTS as u64),
            Source::Cycles => (b::PERF_TYPE_HARDWARE, b::PERF_COUNT_HW_CPU_CYCLES as u64),
        };
        attr.__bindgen_anon_1.sample_period = spec.period;
        attr.sample_type = SAMPLE_TYPE;
        attr.sample_max_stack = spec.sample_max_stack;
        attr.set_disabled(1);
        attr.set_exclude_hv(1);
        attr.set_exclude_kernel(u64::from(spec.exclude_kernel));
        attr.set_exclude_callchain_kernel(u64::from(spec.exclude_callchain_kernel));
        attr.set_exclude_callchain_user(u64::from(spec.exclude_callchain_user));
        // SAFETY: `attr` is an initialized perf_event_attr of the size given.
        let fd =
            unsafe { sys::perf_event_open(&mut attr, 0, -1, -1, b::PERF_FLAG_FD_CLOEXEC as _) };
        if fd < 0 {
            return Err(last_errno());
        }
        // SAFETY: the kernel just returned this fd; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let page = page_size();
        let map_len = page * (1 + data_pages);
        // SAFETY: mapping a perf fd shared read-write is the ring interface;
        // checked below.
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
        if base == libc::MAP_FAILED {
            return Err(last_errno());
        }
        Ok(Event {
            fd,
            base: base.cast(),
            map_len,
            page,
            data_size: page * data_pages,
        })
    }

    fn check_ioctl(&self, what: &str, r: i32) {
        assert!(r >= 0, "{what}: {}", io::Error::last_os_error());
    }

    /// `PERF_EVENT_IOC_SET_BPF`.
    pub fn set_bpf(&self, prog: &OwnedFd) -> Result<(), Errno> {
        // SAFETY: both fds are open; the ioctl takes the program's fd.
        let r = unsafe { sys::ioctls::SET_BPF(self.fd.as_raw_fd(), prog.as_raw_fd() as u32) };
        if r < 0 {
            Err(last_errno())
        } else {
            Ok(())
        }
    }

    /// `PERF_EVENT_IOC_ENABLE`.
    pub fn enable(&self) {
        // SAFETY: a perf fd; ENABLE takes no pointer.
        let r = unsafe { sys::ioctls::ENABLE(self.fd.as_raw_fd(), 0) };
        self.check_ioctl("PERF_EVENT_IOC_ENABLE", r);
    }

    /// `PERF_EVENT_IOC_DISABLE`.
    pub fn disable(&self) {
        // SAFETY: a perf fd; DISABLE takes no pointer.
        let r = unsafe { sys::ioctls::DISABLE(self.fd.as_raw_fd(), 0) };
        self.check_ioctl("PERF_EVENT_IOC_DISABLE", r);
    }

    fn cursor(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: `offset` is that of data_head or data_tail in the first
        // page of the mapping (8-aligned u64s), which lives as long as self;
        // the kernel updates them concurrently, hence atomics.
        unsafe { &*self.base.add(offset).cast::<AtomicU64>() }
    }

    /// Every record written since the last call, parsed.
    pub fn drain(&self) -> RingContents {
        let head_at = std::mem::offset_of!(b::perf_event_mmap_page, data_head);
        let tail_at = std::mem::offset_of!(b::perf_event_mmap_page, data_tail);
        let head = self.cursor(head_at).load(Ordering::Relaxed);
        // Pairs with the kernel's barrier before it publishes data_head:
        // the records below it are written.
        fence(Ordering::Acquire);
        let mut tail = self.cursor(tail_at).load(Ordering::Relaxed);
        let mut out = RingContents::default();
        while tail < head {
            let hdr = self.copy_out(tail, 8);
            let ty = u32::from_ne_bytes(hdr[..4].try_into().unwrap());
            let size = usize::from(u16::from_ne_bytes(hdr[6..8].try_into().unwrap()));
            assert!(size >= 8, "perf record of size {size}");
            let rec = self.copy_out(tail, size);
            match ty {
                b::PERF_RECORD_SAMPLE => out.samples.push(parse_sample(&rec)),
                b::PERF_RECORD_LOST => out.lost += word(&rec, 16),
                b::PERF_RECORD_THROTTLE => out.throttled += 1,
                _ => {}
            }
            tail += size as u64;
        }
        // Release: our reads of the records happen before the kernel may
        // overwrite them (it reads data_tail before writing).
        self.cursor(tail_at).store(tail, Ordering::Release);
        out
    }

    /// `len` bytes of the data area from ring position `pos` (wrapping).
    fn copy_out(&self, pos: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| {
                let at = (pos as usize + i) % self.data_size;
                // SAFETY: `at` < data_size, inside the data area after the
                // first page; the kernel does not write below data_head.
                unsafe { *self.base.add(self.page + at) }
            })
            .collect()
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: `base` is the mapping of `map_len` bytes made in `open`.
        unsafe { libc::munmap(self.base.cast(), self.map_len) };
    }
}

fn word(rec: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(rec[at..at + 8].try_into().unwrap())
}

/// A sample of [`SAMPLE_TYPE`]: header, ip, pid/tid, time, cpu/res, nr, ips.
///
/// perf sizes the record when it prepares the sample, before the program
/// runs; a user-stack `_pe` call of the program may then shorten the
/// callchain (see `kernel_diff_pe.rs`), and perf writes `nr` and that many
/// ips of the shortened chain, leaving the rest of the record as the ring
/// held it. So `nr` can be below what the size allows.
fn parse_sample(rec: &[u8]) -> Sample {
    let nr = word(rec, 40) as usize;
    let room = (rec.len() - 48) / 8;
    assert!(
        rec.len() >= 48 && nr <= room,
        "PERF_RECORD_SAMPLE of {} bytes with nr {nr}",
        rec.len()
    );
    Sample {
        prepared_nr: room,
        ip: word(rec, 8),
        pid: u32::from_ne_bytes(rec[16..20].try_into().unwrap()),
        tid: u32::from_ne_bytes(rec[20..24].try_into().unwrap()),
        time: word(rec, 24),
        cpu: u32::from_ne_bytes(rec[32..36].try_into().unwrap()),
        chain: (0..nr).map(|i| word(rec, 48 + 8 * i)).collect(),
    }
}

// --- the plan and the program ------------------------------------------------

/// Operations per sample.
pub const OPS: usize = 6;
/// Bytes of each operation's `bpf_get_stack` buffer: 128 ips, 32 build-id
/// frames.
pub const BUF_MAX: usize = 1024;
/// Slot layout: the sampled `regs->ip`, the sample's index + 1 (written
/// last, so a slot with it is complete), then per operation `kind`, `flags`,
/// `size`, `ret` (u64 each), then the operations' buffers.
const SLOT_IP: usize = 0;
const SLOT_SEQ: usize = 8;
const SLOT_OPS: usize = 16;
const OP_KIND: usize = 0;
const OP_FLAGS: usize = 8;
const OP_SIZE: usize = 16;
const OP_RET: usize = 24;
const OP_WORDS: usize = 32;
const SLOT_BUFS: usize = SLOT_OPS + OPS * OP_WORDS;
pub const SLOT_SIZE: usize = SLOT_BUFS + OPS * BUF_MAX;
/// `offsetof(struct bpf_perf_event_data, regs.ip)` on x86-64 (`pt_regs`:
/// 16 words before `ip`).
#[cfg(target_arch = "x86_64")]
const CTX_IP: i16 = 16 * 8;
/// Written into every `ret` before the run: a slot still holding it was
/// not run.
pub const NOT_RUN: i64 = 0x5EED_5EED;

/// One planned helper call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `bpf_get_stackid(ctx, maps[map], flags)`.
    StackId { map: usize, flags: u64 },
    /// `bpf_get_stack(ctx, buf, size, flags)`.
    GetStack { flags: u64, size: usize },
}

/// What the program did for one sample.
#[derive(Clone, Debug)]
pub struct SlotResult {
    /// `regs->ip` of the sample.
    pub ip: u64,
    /// Each operation's return (an id, a size or `-errno`) and, for
    /// `GetStack`, its whole buffer (`size` bytes).
    pub rets: Vec<(i64, Vec<u8>)>,
}

/// The program's maps: the sample counter and the plan / result slots.
pub struct PlanMaps {
    pub ctl: Map,
    pub slots: Map,
    pub n: u32,
}

impl PlanMaps {
    /// Creates the maps and writes `plan[i]` into slot `i`.
    pub fn create(plan: &[Vec<Op>]) -> PlanMaps {
        let array = |value_size: usize, max_entries: usize| {
            Map::create(CreateAttr {
                map_type: MAP_TYPE_ARRAY,
                key_size: 4,
                value_size: value_size as u32,
                max_entries: max_entries as u32,
                map_flags: 0,
                numa_node: 0,
            })
            .expect("array map for the plan")
        };
        let ctl = array(8, 1);
        let slots = array(SLOT_SIZE, plan.len());
        let mut v = vec![0u8; SLOT_SIZE];
        for (i, ops) in plan.iter().enumerate() {
            assert!(ops.len() <= OPS);
            v.fill(0);
            // A non-zero pattern, so that the kernel's zeroing shows.
            v[SLOT_BUFS..].fill(0xa5);
            for (s, op) in ops.iter().enumerate() {
                let (kind, flags, size) = match *op {
                    Op::StackId { map, flags } => (1 + map as u64, flags, 0),
                    Op::GetStack { flags, size } => {
                        assert!(size <= BUF_MAX);
                        (GET_STACK_KIND, flags, size as u64)
                    }
                };
                let at = SLOT_OPS + s * OP_WORDS;
                v[at + OP_KIND..][..8].copy_from_slice(&kind.to_ne_bytes());
                v[at + OP_FLAGS..][..8].copy_from_slice(&flags.to_ne_bytes());
                v[at + OP_SIZE..][..8].copy_from_slice(&size.to_ne_bytes());
                v[at + OP_RET..][..8].copy_from_slice(&NOT_RUN.to_ne_bytes());
            }
            slots.update(i as u32, &v, 0).expect("write a plan slot");
        }
        PlanMaps {
            ctl,
            slots,
            n: plan.len() as u32,
        }
    }

    /// Samples the program has seen (including those past the last slot).
    pub fn count(&self) -> u64 {
        let mut v = [0u8; 8];
        self.ctl.lookup(0, &mut v).expect("read the sample counter");
        u64::from_ne_bytes(v)
    }

    /// Slot `i` as the program left it, for the plan `ops`.
    pub fn result(&self, i: u32, ops: &[Op]) -> SlotResult {
        let mut v = vec![0u8; SLOT_SIZE];
        self.slots.lookup(i, &mut v).expect("read a plan slot");
        let w = |at: usize| u64::from_ne_bytes(v[at..at + 8].try_into().unwrap());
        assert_eq!(w(SLOT_SEQ), u64::from(i) + 1, "slot {i} was not run");
        let rets = ops
            .iter()
            .enumerate()
            .map(|(s, op)| {
                let ret = w(SLOT_OPS + s * OP_WORDS + OP_RET) as i64;
                let buf = match *op {
                    Op::GetStack { size, .. } => v[SLOT_BUFS + s * BUF_MAX..][..size].to_vec(),
                    Op::StackId { .. } => Vec::new(),
                };
                (ret, buf)
            })
            .collect();
        SlotResult {
            ip: w(SLOT_IP),
            rets,
        }
    }
}

/// Operation kind of `bpf_get_stack`; kinds `1..=MAX_MAPS` are
/// `bpf_get_stackid` on map `kind - 1`, 0 is no operation.
const GET_STACK_KIND: u64 = 1 + MAX_MAPS as u64;
/// Stack maps a program can use.
pub const MAX_MAPS: usize = 8;

/// A BPF assembler with forward labels.
struct Asm {
    code: Vec<u64>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, usize)>,
}

impl Asm {
    fn new() -> Asm {
        Asm {
            code: Vec::new(),
            labels: Vec::new(),
            fixups: Vec::new(),
        }
    }
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, l: usize) {
        self.labels[l] = Some(self.code.len());
    }
    fn i(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.code.push(insn(code, dst, src, off, imm));
    }
    fn ld64(&mut self, dst: u8, src: u8, imm: u64) {
        self.code.extend(ld_imm64(dst, src, imm));
    }
    /// A jump (`code` | BPF_JMP) to `l`.
    fn jmp(&mut self, code: u8, dst: u8, src: u8, imm: i32, l: usize) {
        self.fixups.push((self.code.len(), l));
        self.i(BPF_JMP | code, dst, src, 0, imm);
    }
    fn goto(&mut self, l: usize) {
        self.jmp(0x00, 0, 0, 0, l); // BPF_JA
    }
    fn finish(mut self) -> Vec<u64> {
        for (at, l) in self.fixups {
            let to = self.labels[l].expect("unbound label");
            let off = (to as i64 - at as i64 - 1) as i16;
            self.code[at] = (self.code[at] & !(0xffff << 16)) | (u64::from(off as u16) << 16);
        }
        self.code
    }
}

/// The program for `maps` (stack map fds, at most [`MAX_MAPS`]).
fn plan_program(ctl: i32, slots: i32, n: u32, maps: &[i32]) -> Vec<u64> {
    assert!(maps.len() <= MAX_MAPS);
    let mut a = Asm::new();
    let skip_sample = a.label();
    a.i(BPF_ALU64 | BPF_MOV | BPF_X, 6, 1, 0, 0); // r6 = ctx
                                                  // r0 = &counter; r8 = counter++
    a.i(BPF_ST | BPF_MEM | BPF_W, 10, 0, -4, 0);
    a.i(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0);
    a.i(BPF_ALU64 | BPF_ADD_K, 2, 0, 0, -4);
    a.ld64(1, BPF_PSEUDO_MAP_FD, ctl as u64);
    a.i(BPF_JMP | BPF_CALL, 0, 0, 0, FUNC_MAP_LOOKUP_ELEM);
    a.jmp(BPF_JEQ | BPF_K, 0, 0, 0, skip_sample);
    a.i(BPF_LDX | BPF_MEM | BPF_DW, 8, 0, 0, 0);
    a.i(BPF_ALU64 | BPF_MOV | BPF_X, 1, 8, 0, 0);
    a.i(BPF_ALU64 | BPF_ADD_K, 1, 0, 0, 1);
    a.i(BPF_STX | BPF_MEM | BPF_DW, 0, 1, 0, 0);
    // Past the last slot: keep the sample out of the ring (return 0).
    a.jmp(BPF_JGE_K, 8, 0, n as i32, skip_sample);
    // r7 = &slots[r8]
    a.i(BPF_STX | BPF_MEM | BPF_W, 10, 8, -4, 0);
    a.i(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0);
    a.i(BPF_ALU64 | BPF_ADD_K, 2, 0, 0, -4);
    a.ld64(1, BPF_PSEUDO_MAP_FD, slots as u64);
    a.i(BPF_JMP | BPF_CALL, 0, 0, 0, FUNC_MAP_LOOKUP_ELEM);
    a.jmp(BPF_JEQ | BPF_K, 0, 0, 0, skip_sample);
    a.i(BPF_ALU64 | BPF_MOV | BPF_X, 7, 0, 0, 0);
    // slot->ip = ctx->regs.ip
    a.i(BPF_LDX | BPF_MEM | BPF_DW, 1, 6, CTX_IP, 0);
    a.i(BPF_STX | BPF_MEM | BPF_DW, 7, 1, SLOT_IP as i16, 0);
    for s in 0..OPS {
        let op = (SLOT_OPS + s * OP_WORDS) as i16;
        let buf = (SLOT_BUFS + s * BUF_MAX) as i32;
        let end = a.label();
        let gs = a.label();
        let per_map: Vec<usize> = maps.iter().map(|_| a.label()).collect();
        a.i(BPF_LDX | BPF_MEM | BPF_DW, 1, 7, op + OP_KIND as i16, 0);
        for (m, &l) in per_map.iter().enumerate() {
            a.jmp(BPF_JEQ | BPF_K, 1, 0, 1 + m as i32, l);
        }
        a.jmp(BPF_JEQ | BPF_K, 1, 0, GET_STACK_KIND as i32, gs);
        a.goto(end);
        for (&l, &fd) in per_map.iter().zip(maps) {
            // slot->ret = bpf_get_stackid(ctx, map, slot->flags)
            a.bind(l);
            a.i(BPF_ALU64 | BPF_MOV | BPF_X, 1, 6, 0, 0);
            a.ld64(2, BPF_PSEUDO_MAP_FD, fd as u64);
            a.i(BPF_LDX | BPF_MEM | BPF_DW, 3, 7, op + OP_FLAGS as i16, 0);
            a.i(BPF_JMP | BPF_CALL, 0, 0, 0, FUNC_GET_STACKID);
            a.i(BPF_STX | BPF_MEM | BPF_DW, 7, 0, op + OP_RET as i16, 0);
            a.goto(end);
        }
        // slot->ret = bpf_get_stack(ctx, slot->buf, slot->size, slot->flags)
        a.bind(gs);
        a.i(BPF_ALU64 | BPF_MOV | BPF_X, 1, 6, 0, 0);
        a.i(BPF_ALU64 | BPF_MOV | BPF_X, 2, 7, 0, 0);
        a.i(BPF_ALU64 | BPF_ADD_K, 2, 0, 0, buf);
        a.i(BPF_LDX | BPF_MEM | BPF_DW, 3, 7, op + OP_SIZE as i16, 0);
        a.jmp(BPF_JGT | BPF_K, 3, 0, BUF_MAX as i32, end);
        a.i(BPF_LDX | BPF_MEM | BPF_DW, 4, 7, op + OP_FLAGS as i16, 0);
        a.i(BPF_JMP | BPF_CALL, 0, 0, 0, FUNC_GET_STACK);
        a.i(BPF_STX | BPF_MEM | BPF_DW, 7, 0, op + OP_RET as i16, 0);
        a.bind(end);
    }
    // slot->seq = index + 1, last
    a.i(BPF_ALU64 | BPF_ADD_K, 8, 0, 0, 1);
    a.i(BPF_STX | BPF_MEM | BPF_DW, 7, 8, SLOT_SEQ as i16, 0);
    a.i(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 1);
    a.i(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
    a.bind(skip_sample);
    a.i(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 0);
    a.i(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
    a.finish()
}

const BPF_ADD_K: u8 = super::BPF_ADD | BPF_K;
/// `BPF_JGE | BPF_K` (unsigned `>=`).
const BPF_JGE_K: u8 = 0x30 | BPF_K;

/// Loads the plan program for `maps` (the stack maps, in the order `Op`
/// names them). `Err(errno)` when the kernel refuses the program type
/// here (EPERM / EACCES: no CAP_PERFMON); any other refusal panics with
/// the verifier's log.
pub fn load_plan_program(plan: &PlanMaps, maps: &[&Map]) -> Result<OwnedFd, Errno> {
    let fds: Vec<i32> = maps.iter().map(|m| m.fd.as_raw_fd()).collect();
    let insns = plan_program(
        plan.ctl.fd.as_raw_fd(),
        plan.slots.fd.as_raw_fd(),
        plan.n,
        &fds,
    );
    match load_program(PROG_TYPE_PERF_EVENT, &insns) {
        Ok(fd) => Ok(fd),
        Err((e @ (libc::EPERM | libc::EACCES), _)) => Err(e),
        Err((e, log)) => {
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            panic!(
                "BPF_PROG_LOAD (perf_event): {}\nverifier log (end):\n{tail}",
                io::Error::from_raw_os_error(e)
            )
        }
    }
}

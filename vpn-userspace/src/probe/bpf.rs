//! Kernel BPF features found out by asking the kernel: tiny programs and maps made with the
//! raw `bpf(2)` syscall (independent of our own object, so a probe never depends on what our
//! programs happen to use), the way `bpftool feature probe` and Cilium's probes do it.
//!
//! Each probe returns what the kernel said: accepted, or refused with the errno and, for a
//! program, the first line of the verifier log that explains why.

use std::{
    ffi::c_void,
    io,
    os::fd::{FromRawFd, OwnedFd, RawFd},
    path::Path,
};

const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_TEST_RUN: libc::c_int = 10;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;

const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// `bpf_xdp_adjust_meta`'s helper id (include/uapi/linux/bpf.h).
pub const HELPER_XDP_ADJUST_META: i32 = 54;
/// `bpf_xdp_adjust_head`'s helper id.
pub const HELPER_XDP_ADJUST_HEAD: i32 = 44;

/// bpffs's `f_type` in statfs(2).
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Copy, Clone)]
struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn mov64_imm(dst: u8, imm: i32) -> Insn {
    // BPF_ALU64 | BPF_MOV | BPF_K
    Insn {
        code: 0xb7,
        regs: dst & 0x0f,
        off: 0,
        imm,
    }
}

const fn call(helper: i32) -> Insn {
    // BPF_JMP | BPF_CALL
    Insn {
        code: 0x85,
        regs: 0,
        off: 0,
        imm: helper,
    }
}

const fn exit() -> Insn {
    // BPF_JMP | BPF_EXIT
    Insn {
        code: 0x95,
        regs: 0,
        off: 0,
        imm: 0,
    }
}

/// `union bpf_attr` for BPF_PROG_LOAD, up to the fields we set (the kernel accepts a shorter
/// attr as long as what follows is zero; we pass the whole zeroed struct).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u64; 8],
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    // u32s: a u64 here would leave 4 bytes of padding the kernel reads as map_ifindex.
    _rest: [u32; 16],
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
    _rest: [u64; 4],
}

fn sys_bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, zero-padded repr(C) struct of the layout `cmd` expects; every
    // pointer in it points to memory that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The kernel's answer to a program load.
#[derive(Debug)]
pub struct Refusal {
    pub error: io::Error,
    /// The verifier's explanation (the last non-empty lines of its log), if it gave one.
    pub verifier: Option<String>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.verifier {
            Some(v) => write!(f, "{} ({})", v, self.error),
            None => write!(f, "{}", self.error),
        }
    }
}

/// Loads an XDP program of `insns` (GPL). Returns its fd, or the refusal with the verifier's
/// reason.
fn load_xdp(insns: &[Insn], name: &str) -> Result<OwnedFd, Refusal> {
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..Default::default()
    };
    let n = name.len().min(15);
    attr.prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    match sys_bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: a new fd the kernel just gave us.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
        Err(error) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            // The reason is the last line the verifier wrote (earlier ones trace the
            // instructions); "processed N insns" is a summary, not a reason.
            let verifier = text
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with("processed "))
                .map(str::to_string);
            Err(Refusal { error, verifier })
        }
    }
}

/// Whether the verifier lets an XDP program call `helper` (a program of `r2 = -16; call
/// helper; r0 = XDP_PASS; exit`, with the context in r1 as at entry).
fn xdp_helper_accepted(helper: i32, name: &str) -> Result<(), Refusal> {
    let prog = [
        mov64_imm(2, -16),
        call(helper),
        mov64_imm(0, XDP_PASS),
        exit(),
    ];
    load_xdp(&prog, name).map(drop)
}

/// Environment variable that makes this process behave as on a kernel that refuses some
/// features, on a kernel that has them: a comma-separated list of `adjust_meta` (the verifier
/// refuses `bpf_xdp_adjust_meta` to XDP programs; the loader then refuses the metadata
/// carrier the same way) and `live_frames` (`BPF_F_TEST_XDP_LIVE_FRAMES` gets EPERM). For
/// testing the fallback paths on machines whose kernel has everything; never set in
/// production.
pub const EMULATE_REFUSE_ENV: &str = "VPN_EMULATE_REFUSE";

/// Whether [`EMULATE_REFUSE_ENV`] names `feature`.
pub fn emulated_refusal(feature: &str) -> bool {
    std::env::var(EMULATE_REFUSE_ENV).is_ok_and(|v| v.split(',').any(|f| f.trim() == feature))
}

/// The size of the native code of a trivial XDP program (`r0 = XDP_PASS; exit`): 0 when the
/// kernel runs programs in its interpreter (the JIT is off), more when it compiled it. The
/// definitive answer in any network namespace (the `net.core.bpf_jit_enable` switch is visible
/// only in the initial one).
pub fn jited() -> Result<u32, Refusal> {
    let fd = load_xdp(&[mov64_imm(0, XDP_PASS), exit()], "probe_jit")?;
    let mut info = ProgInfoHead::default();
    let mut attr = InfoAttr {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        info_len: std::mem::size_of::<ProgInfoHead>() as u32,
        info: &mut info as *mut ProgInfoHead as u64,
        ..Default::default()
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map_err(|error| Refusal {
        error,
        verifier: None,
    })?;
    Ok(info.jited_prog_len)
}

/// `bpf_xdp_adjust_meta` in XDP programs: refused by some kernels (seen: 6.18.44-fc-v1300,
/// "program of this type cannot use helper bpf_xdp_adjust_meta#54").
pub fn xdp_adjust_meta() -> Result<(), Refusal> {
    if emulated_refusal("adjust_meta") {
        return Err(Refusal {
            error: io::Error::from_raw_os_error(libc::EINVAL),
            verifier: Some(format!(
                "program of this type cannot use helper bpf_xdp_adjust_meta#54 (emulated: \
                 {EMULATE_REFUSE_ENV})"
            )),
        });
    }
    xdp_helper_accepted(HELPER_XDP_ADJUST_META, "probe_meta")
}

/// `bpf_xdp_adjust_head` in XDP programs (what the in-packet shim and tag popping use).
pub fn xdp_adjust_head() -> Result<(), Refusal> {
    xdp_helper_accepted(HELPER_XDP_ADJUST_HEAD, "probe_head")
}

/// An array map with `BPF_F_MMAPABLE` that really maps (the replay windows are shared with the
/// workers this way; Linux 5.5+).
pub fn mmapable_array() -> io::Result<()> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 8,
        max_entries: 1,
        map_flags: BPF_F_MMAPABLE,
        ..Default::default()
    };
    attr.map_name[..10].copy_from_slice(b"probe_mmap");
    // SAFETY: a new fd the kernel just gave us.
    let fd = unsafe { OwnedFd::from_raw_fd(sys_bpf(BPF_MAP_CREATE, &mut attr)? as RawFd) };
    let len = 4096;
    // SAFETY: a shared mapping of the map's fd, unmapped right below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: exactly the mapping made above.
    unsafe { libc::munmap(p, len) };
    Ok(())
}

/// `BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` (Linux 5.18+): one 64-byte frame through
/// a program that returns XDP_DROP, on `ifindex` of the calling thread's namespace (1 is the
/// loopback). Nothing leaves: the program drops the frame. Seen refused with EPERM on
/// 6.18.44-fc-v1300 even as root.
pub fn xdp_live_frames(ifindex: u32) -> io::Result<()> {
    if emulated_refusal("live_frames") {
        return Err(io::Error::other(format!(
            "{} (emulated: {EMULATE_REFUSE_ENV})",
            io::Error::from_raw_os_error(libc::EPERM)
        )));
    }
    let prog = [mov64_imm(0, XDP_DROP), exit()];
    let fd = load_xdp(&prog, "probe_live").map_err(|r| r.error)?;
    let frame = [0u8; 64];
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    let ctx: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
    let mut attr = TestRunAttr {
        prog_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: 1,
        ctx_size_in: std::mem::size_of_val(&ctx) as u32,
        ctx_in: ctx.as_ptr() as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: 1,
        ..Default::default()
    };
    sys_bpf(BPF_PROG_TEST_RUN, &mut attr).map(drop)
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
    _rest: [u64; 4],
}

/// The head of `struct bpf_prog_info`, up to the translated instructions.
#[repr(C)]
#[derive(Default)]
struct ProgInfoHead {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
}

/// The `imm` of every helper call in a loaded program's translated code (what the verifier
/// kept: code it proved dead is gone). The kernel rewrites a helper's id into the helper's
/// offset from `__bpf_call_base`; compare with [`helper_call_imm`].
pub fn xlated_helper_calls(prog: std::os::fd::BorrowedFd<'_>) -> io::Result<Vec<i32>> {
    use std::os::fd::AsRawFd;
    let mut info = ProgInfoHead::default();
    let mut attr = InfoAttr {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: std::mem::size_of::<ProgInfoHead>() as u32,
        info: &mut info as *mut ProgInfoHead as u64,
        ..Default::default()
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let n = info.xlated_prog_len as usize / std::mem::size_of::<Insn>();
    let mut insns = vec![mov64_imm(0, 0); n];
    let mut info = ProgInfoHead {
        xlated_prog_len: (n * std::mem::size_of::<Insn>()) as u32,
        xlated_prog_insns: insns.as_mut_ptr() as u64,
        ..Default::default()
    };
    let mut attr = InfoAttr {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: std::mem::size_of::<ProgInfoHead>() as u32,
        info: &mut info as *mut ProgInfoHead as u64,
        ..Default::default()
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(insns
        .iter()
        // BPF_JMP | BPF_CALL to a helper (src_reg 0; 1 is a BPF-to-BPF call, 2 a kfunc).
        .filter(|i| i.code == 0x85 && i.regs >> 4 == 0)
        .map(|i| i.imm)
        .collect())
}

/// The `imm` a call to the kernel function `name` has in translated code (its address minus
/// `__bpf_call_base`, from /proc/kallsyms; root sees the addresses).
pub fn helper_call_imm(name: &str) -> io::Result<i32> {
    let syms = std::fs::read_to_string("/proc/kallsyms")?;
    let addr = |want: &str| {
        syms.lines().find_map(|l| {
            let mut w = l.split_whitespace();
            let (a, _, n) = (w.next()?, w.next()?, w.next()?);
            (n == want)
                .then(|| u64::from_str_radix(a, 16).ok())
                .flatten()
        })
    };
    let (Some(f), Some(base)) = (addr(name), addr("__bpf_call_base")) else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{name} or __bpf_call_base not in /proc/kallsyms"),
        ));
    };
    if f == 0 || base == 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "/proc/kallsyms hides addresses (kptr_restrict; run as root)",
        ));
    }
    Ok(f.wrapping_sub(base) as i32)
}

/// Whether `dir` is a bpffs mount.
pub fn is_bpffs(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) }) == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_have_the_kernel_layout() {
        // Offsets of the last field we set, from include/uapi/linux/bpf.h.
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(MapCreateAttr, map_name), 28);
        assert_eq!(std::mem::offset_of!(TestRunAttr, batch_size), 72);
        assert_eq!(std::mem::offset_of!(ProgInfoHead, xlated_prog_insns), 32);
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }
}

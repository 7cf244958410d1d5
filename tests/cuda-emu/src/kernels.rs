//! The kernels: CPU builds of `kernels.cu` made by build.rs, matched
//! against the PTX the backend loads, and launched through the block
//! scheduler (`cpp/scheduler.cpp`).
//!
//! Loading a module checks that every `.entry` of the PTX has a CPU build
//! with the same parameter sizes, so the emulator can only run the kernels
//! NVRTC compiled from the same source. Launching makes the driver's own
//! checks (block and grid limits, shared memory), then runs the grid one
//! block at a time under a process-wide lock.

use crate::status::{self, CUresult};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::Mutex;

/// One kernel of a C++ registry (`kbemu::KernelInfo` in cuda_on_cpu.hpp).
#[repr(C)]
pub struct KernelInfo {
    name: *const c_char,
    func: *const c_void,
    invoke: *const c_void,
    nparams: u32,
    param_sizes: [u8; 24],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct KernelTable {
    kernels: *const KernelInfo,
    count: u32,
}

extern "C" {
    fn kbemu_kernels_original() -> KernelTable;
    fn kbemu_kernels_offbyone() -> KernelTable;
    fn kbemu_kernels_nosync() -> KernelTable;
    fn kbemu_kernels_selftest() -> KernelTable;
    fn kbemu_run(
        kernel: *const KernelInfo,
        params: *mut *mut c_void,
        grid: *const u32,
        block: *const u32,
        seed: u64,
        msg: *mut c_char,
        cap: usize,
        fault_addr: *mut usize,
        place: *mut u32,
    ) -> c_int;
}

/// A kernel's registry entry; the registries are static C++ data.
#[derive(Clone, Copy)]
pub struct Kernel(&'static KernelInfo);
// SAFETY: the entries are immutable statics.
unsafe impl Send for Kernel {}
unsafe impl Sync for Kernel {}

impl Kernel {
    pub fn name(&self) -> &'static str {
        // SAFETY: names are C string literals.
        unsafe { CStr::from_ptr(self.0.name) }
            .to_str()
            .unwrap_or("?")
    }
    pub fn param_sizes(&self) -> &[u8] {
        &self.0.param_sizes[..self.0.nparams as usize]
    }
}

fn table(t: KernelTable) -> Vec<Kernel> {
    (0..t.count as usize)
        // SAFETY: `count` entries of a static array.
        .map(|i| Kernel(unsafe { &*t.kernels.add(i) }))
        .collect()
}

/// The CPU builds of kernels.cu the current plant selects (the unchanged
/// file without one), and the emulator's self-test kernels.
fn registry() -> Result<Vec<Kernel>, String> {
    // SAFETY: the registry functions return static tables.
    let kernels = unsafe {
        match crate::plant() {
            Some("offbyone") => table(kbemu_kernels_offbyone()),
            Some("nosync") => table(kbemu_kernels_nosync()),
            _ => table(kbemu_kernels_original()),
        }
    };
    if kernels.is_empty() {
        return Err(format!(
            "the planted fault {:?} no longer applies to kernels.cu: update `plant` in \
             tests/cuda-emu/build.rs",
            crate::plant().unwrap_or("")
        ));
    }
    Ok(kernels)
}

pub fn selftest_kernels() -> Vec<Kernel> {
    // SAFETY: a static table.
    table(unsafe { kbemu_kernels_selftest() })
}

/// One `.entry` of a PTX module: its name, parameter sizes and static
/// shared memory.
#[derive(Debug, PartialEq)]
pub struct Entry {
    pub name: String,
    pub params: Vec<u32>,
    pub shared_bytes: u32,
}

fn type_bytes(t: &str) -> Option<u32> {
    match t.get(2..)? {
        "8" => Some(1),
        "16" => Some(2),
        "32" => Some(4),
        "64" => Some(8),
        _ => None,
    }
}

/// Size of a `.param` or `.shared` declaration (`.u64 name`,
/// `.align 8 .b8 name[256]`, with optional `.ptr`/state space words).
fn declared_bytes(decl: &str) -> Option<u32> {
    let words: Vec<&str> = decl.split_whitespace().collect();
    let ty = words
        .iter()
        .find(|w| {
            let w = w.as_bytes();
            w.len() >= 3 && w[0] == b'.' && matches!(w[1], b'u' | b's' | b'b' | b'f')
        })
        .and_then(|w| type_bytes(w))?;
    let name = words.last()?.trim_end_matches([',', ';']);
    let count = match name.split_once('[') {
        Some((_, n)) => n.trim_end_matches(']').parse::<u32>().ok()?,
        None => 1,
    };
    ty.checked_mul(count)
}

/// The entries of a PTX module.
pub fn parse_ptx(ptx: &str) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    let mut rest = ptx;
    while let Some(at) = rest.find(".entry ") {
        rest = &rest[at + ".entry ".len()..];
        let open = rest.find('(').ok_or("an .entry without parameters")?;
        let name = rest[..open].trim().to_string();
        let close = rest
            .find(')')
            .ok_or("an .entry's parameter list is not closed")?;
        let mut params = Vec::new();
        for decl in rest[open + 1..close].split(".param").skip(1) {
            params.push(declared_bytes(decl).ok_or_else(|| {
                format!("{name}: cannot read the parameter declaration {decl:?}")
            })?);
        }
        // The body: from the first '{' to its matching '}'.
        let body_start = rest[close..].find('{').ok_or("an .entry without a body")? + close;
        let mut depth = 0usize;
        let mut body_end = rest.len();
        for (i, c) in rest[body_start..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        body_end = body_start + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let mut shared_bytes = 0u32;
        for line in rest[body_start..body_end].lines() {
            let line = line.trim();
            if let Some(decl) = line.strip_prefix(".shared") {
                let bytes =
                    declared_bytes(decl).ok_or_else(|| format!("{name}: cannot read {line:?}"))?;
                shared_bytes = shared_bytes.saturating_add(bytes.next_multiple_of(16));
            }
        }
        entries.push(Entry {
            name,
            params,
            shared_bytes,
        });
        rest = &rest[body_end..];
    }
    Ok(entries)
}

/// A loaded kernel (what a `CUfunction` points to).
pub struct Function {
    pub kernel: Kernel,
    pub static_shared: u32,
    /// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`.
    pub max_dynamic_shared: u32,
}

/// A loaded module: one function per PTX entry.
pub struct Module {
    pub functions: Vec<Box<Function>>,
}

/// Loads a PTX image, checking it against the CPU builds.
pub fn load(ptx: &str) -> Result<Module, String> {
    let registry = registry()?;
    let selftest = selftest_kernels();
    let entries = parse_ptx(ptx)?;
    if entries.is_empty() {
        return Err("the PTX has no .entry".into());
    }
    let mut functions = Vec::new();
    for e in entries {
        let kernel = registry
            .iter()
            .chain(&selftest)
            .find(|k| k.name() == e.name)
            .copied()
            .ok_or_else(|| {
                format!(
                    "PTX entry {} has no CPU build: the emulator was built from another \
                     kernels.cu (rebuild it)",
                    e.name
                )
            })?;
        let cpu: Vec<u32> = kernel.param_sizes().iter().map(|&b| b as u32).collect();
        if cpu != e.params {
            return Err(format!(
                "{}: the PTX's parameter sizes {:?} differ from the CPU build's {cpu:?}",
                e.name, e.params
            ));
        }
        functions.push(Box::new(Function {
            kernel,
            static_shared: e.shared_bytes,
            max_dynamic_shared: DEFAULT_SHARED - e.shared_bytes.min(DEFAULT_SHARED),
        }));
    }
    Ok(Module { functions })
}

/// Shared memory a block may use without opting in, and with (sm_90).
pub const DEFAULT_SHARED: u32 = 48 * 1024;
pub const OPTIN_SHARED: u32 = 227 * 1024;
pub const MAX_THREADS: u32 = 1024;
pub const MAX_BLOCK: [u32; 3] = [1024, 1024, 64];
pub const MAX_GRID: [u32; 3] = [i32::MAX as u32, 65_535, 65_535];

/// Serialises kernel execution: the scheduler's fibers and the shared
/// memory section are process-wide.
static LAUNCH: Mutex<u64> = Mutex::new(0);

/// The driver's checks of a launch configuration, as `cuLaunchKernel`
/// makes them before anything runs.
pub fn check_config(
    f: &Function,
    grid: [u32; 3],
    block: [u32; 3],
    shared: u32,
) -> Result<(), String> {
    if grid.contains(&0) || block.contains(&0) {
        return Err(format!("a zero dimension (grid {grid:?}, block {block:?})"));
    }
    for d in 0..3 {
        if block[d] > MAX_BLOCK[d] {
            return Err(format!("block {block:?} exceeds the limit {MAX_BLOCK:?}"));
        }
        if grid[d] > MAX_GRID[d] {
            return Err(format!("grid {grid:?} exceeds the limit {MAX_GRID:?}"));
        }
    }
    let threads = block.iter().map(|&b| b as u64).product::<u64>();
    if threads > MAX_THREADS as u64 {
        return Err(format!(
            "{threads} threads per block exceed the limit of {MAX_THREADS}"
        ));
    }
    if shared > f.max_dynamic_shared {
        return Err(format!(
            "{shared} bytes of dynamic shared memory exceed the {} bytes this kernel may use \
             (static {}, limit {} without cuFuncSetAttribute)",
            f.max_dynamic_shared, f.static_shared, DEFAULT_SHARED
        ));
    }
    Ok(())
}

/// Why a launch failed once it ran.
pub enum Failure {
    /// A memory access outside every allocation: the address, and the
    /// faulting thread and block.
    Fault { addr: usize, place: [u32; 6] },
    /// Misuse of a barrier or warp intrinsic (the message says which).
    Misuse(String),
}

/// Runs a checked launch to completion.
///
/// # Safety
/// `params` holds one pointer per kernel parameter, to a value of that
/// parameter's type (the driver's `kernelParams` contract).
pub unsafe fn run(
    f: &Function,
    grid: [u32; 3],
    block: [u32; 3],
    params: *mut *mut c_void,
) -> Result<(), Failure> {
    let mut launches = LAUNCH.lock().unwrap_or_else(|e| e.into_inner());
    *launches += 1;
    let mut msg = vec![0 as c_char; 512];
    let mut addr = 0usize;
    let mut place = [0u32; 6];
    let code = kbemu_run(
        f.kernel.0,
        params,
        grid.as_ptr(),
        block.as_ptr(),
        *launches,
        msg.as_mut_ptr(),
        msg.len(),
        &mut addr,
        place.as_mut_ptr(),
    );
    match code {
        0 => Ok(()),
        1 => Err(Failure::Fault { addr, place }),
        3 => Err(Failure::Misuse(
            "the fiber stacks could not be mapped".into(),
        )),
        _ => Err(Failure::Misuse(
            CStr::from_ptr(msg.as_ptr()).to_string_lossy().into_owned(),
        )),
    }
}

/// The `CUresult` a failure leaves in the context.
pub fn failure_status(f: &Failure) -> CUresult {
    match f {
        Failure::Fault { .. } => status::ILLEGAL_ADDRESS,
        Failure::Misuse(_) => status::LAUNCH_FAILED,
    }
}

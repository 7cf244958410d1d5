//! The driver API: the `cu*` entry points that cudarc's safe layer calls on
//! the backend's paths, with the real driver's preconditions (cuInit first,
//! a current context, valid handles, copies inside allocations) and its
//! sticky errors after a kernel fault.
//!
//! Work on a stream runs when it is issued, so every asynchronous call is
//! complete when it returns and synchronisation only reports errors.
//! Handles are addresses of boxes this module owns; a handle it did not
//! hand out is `CUDA_ERROR_INVALID_HANDLE`.

use crate::kernels::{self, Failure, Function, Module};
use crate::status::{self, CUresult};
use crate::{device, report, Device};
use std::cell::Cell;
use std::collections::BTreeSet;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::time::Instant;

pub type CUdevice = c_int;
pub type CUdeviceptr = u64;
type Handle = *mut c_void;

/// The emulated device's name and compute capability (Hopper: NVRTC
/// compiles the PTX for compute_90, as on an H100).
pub const NAME: &str = "kilobyte cuda-emu (CPU emulation of sm_90)";
pub const CAPABILITY: (c_int, c_int) = (9, 0);

/// Live handles by address.
#[derive(Default)]
pub struct Handles {
    streams: BTreeSet<usize>,
    events: BTreeSet<usize>,
    modules: BTreeSet<usize>,
    functions: BTreeSet<usize>,
    primary_refs: u32,
}

impl Handles {
    pub const fn new() -> Self {
        Handles {
            streams: BTreeSet::new(),
            events: BTreeSet::new(),
            modules: BTreeSet::new(),
            functions: BTreeSet::new(),
            primary_refs: 0,
        }
    }
}

/// The primary context's handle: the address of this byte.
static CONTEXT: u8 = 0;
fn context() -> Handle {
    &CONTEXT as *const u8 as Handle
}

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The device, if a call may use it now: after cuInit, with the context
/// current on this thread, and with no sticky error.
fn ready() -> Result<std::sync::MutexGuard<'static, Device>, CUresult> {
    let dev = device();
    if !dev.initialized {
        return Err(status::NOT_INITIALIZED);
    }
    if CURRENT.with(|c| c.get()) != context() as usize {
        return Err(status::INVALID_CONTEXT);
    }
    if dev.sticky != status::SUCCESS {
        return Err(dev.sticky);
    }
    Ok(dev)
}

fn code(r: Result<(), CUresult>) -> CUresult {
    r.err().unwrap_or(status::SUCCESS)
}

fn valid_stream(dev: &Device, s: Handle) -> Result<(), CUresult> {
    // 0: the default stream; 1 and 2: CU_STREAM_LEGACY / PER_THREAD.
    if (s as usize) <= 2 || dev.handles.streams.contains(&(s as usize)) {
        Ok(())
    } else {
        Err(status::INVALID_HANDLE)
    }
}

/// Checks that `[ptr, ptr + bytes)` is device memory, naming the call that
/// asked.
fn check_range(dev: &Device, what: &str, ptr: CUdeviceptr, bytes: usize) -> Result<(), CUresult> {
    if dev.memory.contains(ptr as usize, bytes) {
        Ok(())
    } else {
        report(&format!(
            "{what}: {bytes} bytes at {ptr:#x} are not inside one allocation ({})",
            dev.memory.describe(ptr as usize)
        ));
        Err(status::INVALID_VALUE)
    }
}

unsafe fn put<T>(out: *mut T, v: T) -> Result<(), CUresult> {
    if out.is_null() {
        return Err(status::INVALID_VALUE);
    }
    out.write(v);
    Ok(())
}

// ---------------------------------------------------------------------------
// Initialisation, device and context

#[no_mangle]
pub unsafe extern "C" fn cuInit(flags: c_uint) -> CUresult {
    if flags != 0 {
        return status::INVALID_VALUE;
    }
    device().initialized = true;
    status::SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(version: *mut c_int) -> CUresult {
    code(put(version, 13000))
}

fn initialized() -> Result<(), CUresult> {
    if device().initialized {
        Ok(())
    } else {
        Err(status::NOT_INITIALIZED)
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CUresult {
    code(initialized().and_then(|_| put(count, 1)))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(dev: *mut CUdevice, ordinal: c_int) -> CUresult {
    code(initialized().and_then(|_| {
        if ordinal != 0 {
            return Err(status::INVALID_DEVICE);
        }
        put(dev, 0)
    }))
}

fn valid_device(dev: CUdevice) -> Result<(), CUresult> {
    initialized()?;
    if dev == 0 {
        Ok(())
    } else {
        Err(status::INVALID_DEVICE)
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    code(valid_device(dev).and_then(|_| {
        if name.is_null() || len <= 0 {
            return Err(status::INVALID_VALUE);
        }
        let n = NAME.len().min(len as usize - 1);
        std::ptr::copy_nonoverlapping(NAME.as_ptr() as *const c_char, name, n);
        *name.add(n) = 0;
        Ok(())
    }))
}

/// `CUdevice_attribute` values the backend or cudarc may ask for; any
/// other attribute reads as 0.
fn attribute(attrib: c_uint) -> c_int {
    match attrib {
        1 => kernels::MAX_THREADS as c_int, // MAX_THREADS_PER_BLOCK
        2..=4 => kernels::MAX_BLOCK[attrib as usize - 2] as c_int, // MAX_BLOCK_DIM_X..Z
        5..=7 => kernels::MAX_GRID[attrib as usize - 5] as c_int, // MAX_GRID_DIM_X..Z
        8 => kernels::DEFAULT_SHARED as c_int, // MAX_SHARED_MEMORY_PER_BLOCK
        10 => 32,                           // WARP_SIZE
        12 => 65_536,                       // MAX_REGISTERS_PER_BLOCK
        13 => 1_980_000,                    // CLOCK_RATE (kHz)
        16 => 132,                          // MULTIPROCESSOR_COUNT
        41 => 1,                            // UNIFIED_ADDRESSING
        75 => CAPABILITY.0,                 // COMPUTE_CAPABILITY_MAJOR
        76 => CAPABILITY.1,                 // COMPUTE_CAPABILITY_MINOR
        97 => kernels::OPTIN_SHARED as c_int, // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        115 => 1,                           // MEMORY_POOLS_SUPPORTED
        _ => 0,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    pi: *mut c_int,
    attrib: c_uint,
    dev: CUdevice,
) -> CUresult {
    code(valid_device(dev).and_then(|_| {
        if attrib == 0 || attrib > 200 {
            return Err(status::INVALID_VALUE);
        }
        put(pi, attribute(attrib))
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    code(valid_device(dev).and_then(|_| put(bytes, crate::memory::TOTAL_BYTES)))
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(pctx: *mut Handle, dev: CUdevice) -> CUresult {
    code(valid_device(dev).and_then(|_| {
        device().handles.primary_refs += 1;
        put(pctx, context())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    code(valid_device(dev).and_then(|_| {
        let mut d = device();
        if d.handles.primary_refs == 0 {
            return Err(status::INVALID_CONTEXT);
        }
        d.handles.primary_refs -= 1;
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: Handle) -> CUresult {
    code(initialized().and_then(|_| {
        if !ctx.is_null() && ctx != context() {
            return Err(status::INVALID_CONTEXT);
        }
        CURRENT.with(|c| c.set(ctx as usize));
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(pctx: *mut Handle) -> CUresult {
    code(initialized().and_then(|_| put(pctx, CURRENT.with(|c| c.get()) as Handle)))
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice(dev: *mut CUdevice) -> CUresult {
    code(ready().and_then(|_| put(dev, 0)))
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    code(ready().map(drop))
}

// ---------------------------------------------------------------------------
// Errors

const ERRORS: &[(CUresult, &CStr, &CStr)] = &[
    (status::SUCCESS, c"CUDA_SUCCESS", c"no error"),
    (
        status::INVALID_VALUE,
        c"CUDA_ERROR_INVALID_VALUE",
        c"invalid argument",
    ),
    (
        status::OUT_OF_MEMORY,
        c"CUDA_ERROR_OUT_OF_MEMORY",
        c"out of memory",
    ),
    (
        status::NOT_INITIALIZED,
        c"CUDA_ERROR_NOT_INITIALIZED",
        c"initialization error",
    ),
    (
        status::INVALID_DEVICE,
        c"CUDA_ERROR_INVALID_DEVICE",
        c"invalid device ordinal",
    ),
    (
        status::INVALID_IMAGE,
        c"CUDA_ERROR_INVALID_IMAGE",
        c"device kernel image is invalid",
    ),
    (
        status::INVALID_CONTEXT,
        c"CUDA_ERROR_INVALID_CONTEXT",
        c"invalid device context",
    ),
    (
        status::INVALID_HANDLE,
        c"CUDA_ERROR_INVALID_HANDLE",
        c"invalid resource handle",
    ),
    (
        status::NOT_FOUND,
        c"CUDA_ERROR_NOT_FOUND",
        c"named symbol not found",
    ),
    (
        status::ILLEGAL_ADDRESS,
        c"CUDA_ERROR_ILLEGAL_ADDRESS",
        c"an illegal memory access was encountered",
    ),
    (
        status::LAUNCH_FAILED,
        c"CUDA_ERROR_LAUNCH_FAILED",
        c"unspecified launch failure",
    ),
    (
        status::NOT_SUPPORTED,
        c"CUDA_ERROR_NOT_SUPPORTED",
        c"operation not supported",
    ),
];

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(error: CUresult, p: *mut *const c_char) -> CUresult {
    match ERRORS.iter().find(|e| e.0 == error) {
        Some(e) => code(put(p, e.1.as_ptr())),
        None => status::INVALID_VALUE,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(error: CUresult, p: *mut *const c_char) -> CUresult {
    match ERRORS.iter().find(|e| e.0 == error) {
        Some(e) => code(put(p, e.2.as_ptr())),
        None => status::INVALID_VALUE,
    }
}

// ---------------------------------------------------------------------------
// Streams and events

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(out: *mut Handle, _flags: c_uint) -> CUresult {
    code(ready().and_then(|mut dev| {
        let s = Box::into_raw(Box::new(0u8)) as usize;
        dev.handles.streams.insert(s);
        put(out, s as Handle)
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreateWithPriority(
    out: *mut Handle,
    flags: c_uint,
    _p: c_int,
) -> CUresult {
    cuStreamCreate(out, flags)
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamDestroy_v2(s: Handle) -> CUresult {
    let mut dev = device();
    if !dev.handles.streams.remove(&(s as usize)) {
        return status::INVALID_HANDLE;
    }
    drop(Box::from_raw(s as *mut u8));
    status::SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize(s: Handle) -> CUresult {
    code(ready().and_then(|dev| valid_stream(&dev, s)))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamWaitEvent(s: Handle, e: Handle, _flags: c_uint) -> CUresult {
    code(ready().and_then(|dev| {
        valid_stream(&dev, s)?;
        if dev.handles.events.contains(&(e as usize)) {
            Ok(())
        } else {
            Err(status::INVALID_HANDLE)
        }
    }))
}

/// An event: when it was last recorded.
struct Event(Option<Instant>);

fn event<'a>(dev: &Device, e: Handle) -> Result<&'a mut Event, CUresult> {
    if dev.handles.events.contains(&(e as usize)) {
        // SAFETY: a live box this module made.
        Ok(unsafe { &mut *(e as *mut Event) })
    } else {
        Err(status::INVALID_HANDLE)
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(out: *mut Handle, _flags: c_uint) -> CUresult {
    code(ready().and_then(|mut dev| {
        let e = Box::into_raw(Box::new(Event(None))) as usize;
        dev.handles.events.insert(e);
        put(out, e as Handle)
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecord(e: Handle, s: Handle) -> CUresult {
    code(ready().and_then(|dev| {
        valid_stream(&dev, s)?;
        event(&dev, e)?.0 = Some(Instant::now());
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventSynchronize(e: Handle) -> CUresult {
    code(ready().and_then(|dev| event(&dev, e).map(drop)))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventQuery(e: Handle) -> CUresult {
    cuEventSynchronize(e)
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime_v2(
    ms: *mut f32,
    start: Handle,
    end: Handle,
) -> CUresult {
    code(ready().and_then(|dev| {
        let (a, b) = (event(&dev, start)?.0, event(&dev, end)?.0);
        match (a, b) {
            (Some(a), Some(b)) => put(ms, b.saturating_duration_since(a).as_secs_f32() * 1e3),
            _ => Err(status::INVALID_HANDLE),
        }
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(ms: *mut f32, start: Handle, end: Handle) -> CUresult {
    cuEventElapsedTime_v2(ms, start, end)
}

#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy_v2(e: Handle) -> CUresult {
    let mut dev = device();
    if !dev.handles.events.remove(&(e as usize)) {
        return status::INVALID_HANDLE;
    }
    drop(Box::from_raw(e as *mut Event));
    status::SUCCESS
}

// ---------------------------------------------------------------------------
// Memory

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytes: usize) -> CUresult {
    code(ready().and_then(|mut dev| {
        let p = dev.memory.alloc(bytes)?;
        put(dptr, p as CUdeviceptr)
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync(
    dptr: *mut CUdeviceptr,
    bytes: usize,
    s: Handle,
) -> CUresult {
    code(ready().and_then(|mut dev| {
        valid_stream(&dev, s)?;
        let p = dev.memory.alloc(bytes)?;
        put(dptr, p as CUdeviceptr)
    }))
}

/// Frees an allocation; a broken canary (a write before its start) leaves
/// the sticky illegal-address error, as the fault on a GPU would.
fn free(dev: &mut Device, dptr: CUdeviceptr) -> Result<(), CUresult> {
    dev.memory.free(dptr as usize)?;
    if std::mem::take(&mut dev.memory.canary_broken) {
        fault(dev);
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    code(ready().and_then(|mut dev| free(&mut dev, dptr)))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeAsync(dptr: CUdeviceptr, s: Handle) -> CUresult {
    code(ready().and_then(|mut dev| {
        valid_stream(&dev, s)?;
        free(&mut dev, dptr)
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    code(ready().and_then(|dev| {
        put(free, crate::memory::TOTAL_BYTES - dev.memory.used())?;
        put(total, crate::memory::TOTAL_BYTES)
    }))
}

unsafe fn htod(dst: CUdeviceptr, src: *const c_void, n: usize, s: Handle) -> CUresult {
    code(ready().and_then(|dev| {
        valid_stream(&dev, s)?;
        check_range(&dev, "cuMemcpyHtoD", dst, n)?;
        if n > 0 && src.is_null() {
            return Err(status::INVALID_VALUE);
        }
        std::ptr::copy(src as *const u8, dst as usize as *mut u8, n);
        Ok(())
    }))
}

unsafe fn dtoh(dst: *mut c_void, src: CUdeviceptr, n: usize, s: Handle) -> CUresult {
    code(ready().and_then(|dev| {
        valid_stream(&dev, s)?;
        check_range(&dev, "cuMemcpyDtoH", src, n)?;
        if n > 0 && dst.is_null() {
            return Err(status::INVALID_VALUE);
        }
        std::ptr::copy(src as usize as *const u8, dst as *mut u8, n);
        Ok(())
    }))
}

unsafe fn dtod(dst: CUdeviceptr, src: CUdeviceptr, n: usize, s: Handle) -> CUresult {
    code(ready().and_then(|dev| {
        valid_stream(&dev, s)?;
        check_range(&dev, "cuMemcpyDtoD (source)", src, n)?;
        check_range(&dev, "cuMemcpyDtoD (destination)", dst, n)?;
        std::ptr::copy(src as usize as *const u8, dst as usize as *mut u8, n);
        Ok(())
    }))
}

unsafe fn memset8(dst: CUdeviceptr, v: u8, n: usize, s: Handle) -> CUresult {
    code(ready().and_then(|dev| {
        valid_stream(&dev, s)?;
        check_range(&dev, "cuMemsetD8", dst, n)?;
        std::ptr::write_bytes(dst as usize as *mut u8, v, n);
        Ok(())
    }))
}

unsafe fn memset32(dst: CUdeviceptr, v: u32, n: usize, s: Handle) -> CUresult {
    code(ready().and_then(|dev| {
        valid_stream(&dev, s)?;
        if !dst.is_multiple_of(4) {
            return Err(status::INVALID_VALUE);
        }
        check_range(&dev, "cuMemsetD32", dst, n.saturating_mul(4))?;
        std::slice::from_raw_parts_mut(dst as usize as *mut u32, n).fill(v);
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    n: usize,
) -> CUresult {
    htod(dst, src, n, std::ptr::null_mut())
}
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    n: usize,
    s: Handle,
) -> CUresult {
    htod(dst, src, n, s)
}
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, n: usize) -> CUresult {
    dtoh(dst, src, n, std::ptr::null_mut())
}
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(
    dst: *mut c_void,
    src: CUdeviceptr,
    n: usize,
    s: Handle,
) -> CUresult {
    dtoh(dst, src, n, s)
}
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoD_v2(dst: CUdeviceptr, src: CUdeviceptr, n: usize) -> CUresult {
    dtod(dst, src, n, std::ptr::null_mut())
}
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoDAsync_v2(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    n: usize,
    s: Handle,
) -> CUresult {
    dtod(dst, src, n, s)
}
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8_v2(dst: CUdeviceptr, v: u8, n: usize) -> CUresult {
    memset8(dst, v, n, std::ptr::null_mut())
}
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8Async(dst: CUdeviceptr, v: u8, n: usize, s: Handle) -> CUresult {
    memset8(dst, v, n, s)
}
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32_v2(dst: CUdeviceptr, v: u32, n: usize) -> CUresult {
    memset32(dst, v, n, std::ptr::null_mut())
}
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32Async(
    dst: CUdeviceptr,
    v: u32,
    n: usize,
    s: Handle,
) -> CUresult {
    memset32(dst, v, n, s)
}

// ---------------------------------------------------------------------------
// Modules, functions and launches

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(out: *mut Handle, image: *const c_void) -> CUresult {
    code(ready().and_then(|mut dev| {
        if image.is_null() || out.is_null() {
            return Err(status::INVALID_VALUE);
        }
        let ptx = CStr::from_ptr(image as *const c_char).to_string_lossy();
        let module = kernels::load(&ptx).map_err(|e| {
            report(&format!("cuModuleLoadData: {e}"));
            status::INVALID_IMAGE
        })?;
        for f in &module.functions {
            dev.handles
                .functions
                .insert(&**f as *const Function as usize);
        }
        let m = Box::into_raw(Box::new(module)) as usize;
        dev.handles.modules.insert(m);
        put(out, m as Handle)
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleUnload(m: Handle) -> CUresult {
    let mut dev = device();
    if !dev.handles.modules.remove(&(m as usize)) {
        return status::INVALID_HANDLE;
    }
    let module = Box::from_raw(m as *mut Module);
    for f in &module.functions {
        dev.handles
            .functions
            .remove(&(&**f as *const Function as usize));
    }
    status::SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(
    out: *mut Handle,
    m: Handle,
    name: *const c_char,
) -> CUresult {
    code(ready().and_then(|dev| {
        if !dev.handles.modules.contains(&(m as usize)) {
            return Err(status::INVALID_HANDLE);
        }
        if name.is_null() {
            return Err(status::INVALID_VALUE);
        }
        let name = CStr::from_ptr(name).to_string_lossy();
        let module = &*(m as *const Module);
        let f = module
            .functions
            .iter()
            .find(|f| f.kernel.name() == name)
            .ok_or(status::NOT_FOUND)?;
        put(out, &**f as *const Function as Handle)
    }))
}

fn function<'a>(dev: &Device, f: Handle) -> Result<&'a mut Function, CUresult> {
    if dev.handles.functions.contains(&(f as usize)) {
        // SAFETY: a live function of a loaded module.
        Ok(unsafe { &mut *(f as *mut Function) })
    } else {
        Err(status::INVALID_HANDLE)
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncGetAttribute(pi: *mut c_int, attrib: c_uint, f: Handle) -> CUresult {
    code(ready().and_then(|dev| {
        let f = function(&dev, f)?;
        let v = match attrib {
            0 => kernels::MAX_THREADS as c_int,
            1 => f.static_shared as c_int,
            2 | 3 => 0,
            4 => 32,
            5 | 6 => CAPABILITY.0 * 10 + CAPABILITY.1,
            8 => f.max_dynamic_shared as c_int,
            9 => -1,
            _ => return Err(status::INVALID_VALUE),
        };
        put(pi, v)
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncSetAttribute(f: Handle, attrib: c_uint, value: c_int) -> CUresult {
    code(ready().and_then(|dev| {
        let f = function(&dev, f)?;
        match attrib {
            // MAX_DYNAMIC_SHARED_SIZE_BYTES: up to the opt-in limit.
            8 if value >= 0 && value as u32 + f.static_shared <= kernels::OPTIN_SHARED => {
                f.max_dynamic_shared = value as u32;
                Ok(())
            }
            9 => Ok(()),
            _ => Err(status::INVALID_VALUE),
        }
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel(
    f: Handle,
    grid_x: c_uint,
    grid_y: c_uint,
    grid_z: c_uint,
    block_x: c_uint,
    block_y: c_uint,
    block_z: c_uint,
    shared: c_uint,
    s: Handle,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    let func: &Function = match ready().and_then(|dev| {
        valid_stream(&dev, s)?;
        function(&dev, f).map(|f| &*f)
    }) {
        Ok(func) => func,
        Err(e) => return e,
    };
    let (grid, block) = ([grid_x, grid_y, grid_z], [block_x, block_y, block_z]);
    if let Err(why) = kernels::check_config(func, grid, block, shared) {
        report(&format!("cuLaunchKernel {}: {why}", func.kernel.name()));
        return status::INVALID_VALUE;
    }
    if !extra.is_null() {
        report("cuLaunchKernel: `extra` parameter buffers are not emulated; pass kernelParams");
        return status::NOT_SUPPORTED;
    }
    if params.is_null() {
        return status::INVALID_VALUE;
    }
    if std::env::var_os("KBEMU_TRACE").is_some() {
        report(&format!("launch {} {grid:?} {block:?}", func.kernel.name()));
    }
    // The device lock is not held while the kernel runs: its memory is
    // plain host memory, and other threads may copy meanwhile, as on a GPU.
    match kernels::run(func, grid, block, params) {
        Ok(()) => status::SUCCESS,
        Err(failure) => {
            let mut dev = device();
            let line = match &failure {
                Failure::Fault { addr, place } => format!(
                    "kernel {} thread ({},{},{}) of block ({},{},{}): illegal memory access at \
                     {addr:#x}, {}",
                    func.kernel.name(),
                    place[0],
                    place[1],
                    place[2],
                    place[3],
                    place[4],
                    place[5],
                    dev.memory.describe(*addr)
                ),
                Failure::Misuse(m) => m.clone(),
            };
            report(&line);
            dev.sticky = kernels::failure_status(&failure);
            dev.sticky
        }
    }
}

/// Records a fault found outside a kernel (a product that reads out of
/// bounds, a broken canary): sticky, as on a GPU.
pub(crate) fn fault(dev: &mut Device) {
    dev.sticky = status::ILLEGAL_ADDRESS;
}

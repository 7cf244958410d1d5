//! cuBLAS: handles and the two products the backend uses, `cublasSgemm_v2`
//! and `cublasGemmEx`, with the semantics NVIDIA documents:
//! column-major operands, `op(A)` m×k and `op(B)` k×n, leading dimensions
//! of the stored (untransposed) matrices, `C = alpha op(A) op(B) + beta C`,
//! and C not read when beta is 0.
//!
//! Arguments are checked as cuBLAS checks them (`CUBLAS_STATUS_INVALID_VALUE`
//! for a leading dimension below the rows of the stored matrix), and every
//! element a product would touch must lie in one allocation, or the call
//! fails and leaves the context's sticky illegal-address error, as the
//! fault on a GPU would. So a wrong transpose or leading dimension gives
//! wrong numbers or an error here, never the right numbers.
//!
//! Precision: operands are read in their stored type; bf16 is widened
//! exactly. fp32 operands are rounded to bf16 under
//! `CUBLAS_COMPUTE_32F_FAST_16BF` and to TF32 under `_FAST_TF32` or the
//! `CUBLAS_TF32_TENSOR_OP_MATH` mode; products accumulate in fp32, in
//! order of k.

use crate::{device, driver, report};
use std::collections::BTreeSet;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::Mutex;

pub type Status = u32;
const SUCCESS: Status = 0;
const NOT_INITIALIZED: Status = 1;
const INVALID_VALUE: Status = 7;
const EXECUTION_FAILED: Status = 13;
const NOT_SUPPORTED: Status = 15;

// cudaDataType
const R_32F: u32 = 0;
const R_16BF: u32 = 14;
// cublasComputeType_t
const COMPUTE_32F: u32 = 68;
const COMPUTE_32F_PEDANTIC: u32 = 69;
const COMPUTE_32F_FAST_16BF: u32 = 75;
const COMPUTE_32F_FAST_TF32: u32 = 77;
// cublasMath_t (low bits; 16 is the DISALLOW_REDUCED_PRECISION flag)
const TF32_TENSOR_OP_MATH: u32 = 3;

struct Handle {
    stream: *mut c_void,
    math: u32,
    pointer_mode: u32,
}

/// Live handles, by address.
static HANDLES: Mutex<BTreeSet<usize>> = Mutex::new(BTreeSet::new());

fn handle<'a>(h: *mut c_void) -> Result<&'a mut Handle, Status> {
    let live = HANDLES.lock().unwrap_or_else(|e| e.into_inner());
    if live.contains(&(h as usize)) {
        // SAFETY: a live box this module made.
        Ok(unsafe { &mut *(h as *mut Handle) })
    } else {
        Err(NOT_INITIALIZED)
    }
}

fn code(r: Result<(), Status>) -> Status {
    r.err().unwrap_or(SUCCESS)
}

#[no_mangle]
pub unsafe extern "C" fn cublasCreate_v2(out: *mut *mut c_void) -> Status {
    if out.is_null() {
        return INVALID_VALUE;
    }
    let h = Box::into_raw(Box::new(Handle {
        stream: std::ptr::null_mut(),
        math: 0,
        pointer_mode: 0,
    }));
    HANDLES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(h as usize);
    *out = h as *mut c_void;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cublasDestroy_v2(h: *mut c_void) -> Status {
    let mut live = HANDLES.lock().unwrap_or_else(|e| e.into_inner());
    if !live.remove(&(h as usize)) {
        return NOT_INITIALIZED;
    }
    drop(Box::from_raw(h as *mut Handle));
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cublasSetStream_v2(h: *mut c_void, stream: *mut c_void) -> Status {
    code(handle(h).map(|h| h.stream = stream))
}

#[no_mangle]
pub unsafe extern "C" fn cublasGetStream_v2(h: *mut c_void, out: *mut *mut c_void) -> Status {
    code(handle(h).and_then(|h| {
        if out.is_null() {
            return Err(INVALID_VALUE);
        }
        *out = h.stream;
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cublasSetMathMode(h: *mut c_void, mode: u32) -> Status {
    code(handle(h).and_then(|h| {
        if mode & !16 > 3 {
            return Err(INVALID_VALUE);
        }
        h.math = mode;
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cublasGetMathMode(h: *mut c_void, out: *mut u32) -> Status {
    code(handle(h).and_then(|h| {
        if out.is_null() {
            return Err(INVALID_VALUE);
        }
        *out = h.math;
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cublasSetPointerMode_v2(h: *mut c_void, mode: u32) -> Status {
    code(handle(h).and_then(|h| {
        if mode > 1 {
            return Err(INVALID_VALUE);
        }
        h.pointer_mode = mode;
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cublasGetPointerMode_v2(h: *mut c_void, out: *mut u32) -> Status {
    code(handle(h).and_then(|h| {
        if out.is_null() {
            return Err(INVALID_VALUE);
        }
        *out = h.pointer_mode;
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cublasSetWorkspace_v2(
    h: *mut c_void,
    _w: *mut c_void,
    _bytes: usize,
) -> Status {
    code(handle(h).map(drop))
}

#[no_mangle]
pub unsafe extern "C" fn cublasGetStatusString(s: Status) -> *const c_char {
    let text: &CStr = match s {
        SUCCESS => c"success",
        NOT_INITIALIZED => c"the library was not initialized",
        INVALID_VALUE => c"an invalid numeric value was used as an argument",
        EXECUTION_FAILED => c"the GPU program failed to execute",
        NOT_SUPPORTED => c"the functionality requested is not supported",
        _ => c"unknown error",
    };
    text.as_ptr()
}

#[no_mangle]
pub unsafe extern "C" fn cublasGetStatusName(s: Status) -> *const c_char {
    let text: &CStr = match s {
        SUCCESS => c"CUBLAS_STATUS_SUCCESS",
        NOT_INITIALIZED => c"CUBLAS_STATUS_NOT_INITIALIZED",
        INVALID_VALUE => c"CUBLAS_STATUS_INVALID_VALUE",
        EXECUTION_FAILED => c"CUBLAS_STATUS_EXECUTION_FAILED",
        NOT_SUPPORTED => c"CUBLAS_STATUS_NOT_SUPPORTED",
        _ => c"CUBLAS_STATUS_UNKNOWN",
    };
    text.as_ptr()
}

/// How an operand's elements become the f32 the products multiply.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Load {
    F32,
    /// fp32 rounded to `bits` mantissa bits (bf16: 7, TF32: 10).
    F32Rounded(u32),
    Bf16,
}

impl Load {
    fn bytes(self) -> usize {
        if self == Load::Bf16 {
            2
        } else {
            4
        }
    }
    /// Element `i` of the array at `p`.
    unsafe fn get(self, p: usize, i: usize) -> f32 {
        match self {
            Load::F32 => *(p as *const f32).add(i),
            Load::F32Rounded(bits) => round_mantissa(*(p as *const f32).add(i), bits),
            Load::Bf16 => f32::from_bits((*(p as *const u16).add(i) as u32) << 16),
        }
    }
}

/// Rounds to nearest even at `bits` mantissa bits (NaN and inf kept).
pub fn round_mantissa(x: f32, bits: u32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    let drop = 23 - bits;
    let b = x.to_bits();
    let half = 1u32 << (drop - 1);
    let rounded = b + (half - 1) + ((b >> drop) & 1);
    f32::from_bits(rounded & !((1u32 << drop) - 1))
}

/// One operand of a product: stored column-major, `rows` × `cols` with
/// leading dimension `ld`.
struct Operand {
    ptr: usize,
    load: Load,
    ld: usize,
    trans: bool,
}

impl Operand {
    /// Element (i, j) of op(X).
    unsafe fn at(&self, i: usize, j: usize) -> f32 {
        if self.trans {
            self.load.get(self.ptr, j + i * self.ld)
        } else {
            self.load.get(self.ptr, i + j * self.ld)
        }
    }
}

/// Bytes spanned by a stored `rows` × `cols` matrix with leading dimension
/// `ld`.
fn span(rows: usize, cols: usize, ld: usize, elem: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        ((cols - 1) * ld + rows) * elem
    }
}

struct Product {
    name: &'static str,
    transa: u32,
    transb: u32,
    m: c_int,
    n: c_int,
    k: c_int,
    a: Operand,
    b: Operand,
    c: usize,
    c_bf16: bool,
    ldc: c_int,
    alpha: *const f32,
    beta: *const f32,
}

fn op(t: u32) -> Result<bool, Status> {
    match t {
        0 => Ok(false),
        1 | 2 => Ok(true), // CUBLAS_OP_C is OP_T for real matrices
        _ => Err(INVALID_VALUE),
    }
}

/// Checks a product's arguments as cuBLAS does, and its memory as a GPU
/// would fault on it, then computes it.
unsafe fn gemm(p: Product) -> Status {
    let check = || -> Result<(usize, usize, usize), Status> {
        let (m, n, k) = (p.m, p.n, p.k);
        if m < 0 || n < 0 || k < 0 {
            return Err(INVALID_VALUE);
        }
        let (m, n, k) = (m as usize, n as usize, k as usize);
        let rows_a = if p.a.trans { k } else { m };
        let rows_b = if p.b.trans { n } else { k };
        if p.a.ld < rows_a.max(1) || p.b.ld < rows_b.max(1) || (p.ldc as i64) < m.max(1) as i64 {
            report(&format!(
                "{}: a leading dimension is below its matrix's rows (m {m}, n {n}, k {k}, \
                 lda {}, ldb {}, ldc {})",
                p.name, p.a.ld, p.b.ld, p.ldc
            ));
            return Err(INVALID_VALUE);
        }
        Ok((m, n, k))
    };
    let (m, n, k) = match (op(p.transa), op(p.transb)) {
        (Ok(_), Ok(_)) => match check() {
            Ok(s) => s,
            Err(e) => return e,
        },
        _ => return INVALID_VALUE,
    };
    if m == 0 || n == 0 {
        return SUCCESS;
    }
    let ldc = p.ldc as usize;
    let (alpha, beta) = (*p.alpha, *p.beta);
    {
        let mut dev = device();
        let (ra, ca) = if p.a.trans { (k, m) } else { (m, k) };
        let (rb, cb) = if p.b.trans { (n, k) } else { (k, n) };
        let c_elem = if p.c_bf16 { 2 } else { 4 };
        for (what, ptr, bytes) in [
            ("A", p.a.ptr, span(ra, ca, p.a.ld, p.a.load.bytes())),
            ("B", p.b.ptr, span(rb, cb, p.b.ld, p.b.load.bytes())),
            ("C", p.c, span(m, n, ldc, c_elem)),
        ] {
            if !dev.memory.contains(ptr, bytes) {
                report(&format!(
                    "{}: {what} spans {bytes} bytes from {ptr:#x}, beyond its allocation ({}); \
                     m {m}, n {n}, k {k}, lda {}, ldb {}, ldc {ldc}",
                    p.name,
                    dev.memory.describe(ptr),
                    p.a.ld,
                    p.b.ld
                ));
                driver::fault(&mut dev);
                return EXECUTION_FAILED;
            }
        }
    }
    // op(A) and op(B) gathered column-major, so the inner loop runs over
    // contiguous memory; each element still adds its k terms in order.
    let mut a = vec![0f32; m * k];
    for l in 0..k {
        for i in 0..m {
            a[i + l * m] = p.a.at(i, l);
        }
    }
    let mut b = vec![0f32; k * n];
    for j in 0..n {
        for l in 0..k {
            b[l + j * k] = p.b.at(l, j);
        }
    }
    let mut col = vec![0f32; m];
    for j in 0..n {
        col.fill(0.0);
        if alpha != 0.0 {
            for l in 0..k {
                let bv = b[l + j * k];
                for (acc, &av) in col.iter_mut().zip(&a[l * m..(l + 1) * m]) {
                    *acc += av * bv;
                }
            }
        }
        for (i, acc) in col.iter().enumerate() {
            let at = i + j * ldc;
            if p.c_bf16 {
                let c = (p.c as *mut u16).add(at);
                let old = if beta == 0.0 {
                    0.0
                } else {
                    f32::from_bits((*c as u32) << 16)
                };
                let v = alpha * acc + if beta == 0.0 { 0.0 } else { beta * old };
                *c = (round_mantissa(v, 7).to_bits() >> 16) as u16;
            } else {
                let c = (p.c as *mut f32).add(at);
                *c = alpha * acc + if beta == 0.0 { 0.0 } else { beta * *c };
            }
        }
    }
    SUCCESS
}

/// The planted fault `gemm-lda`: A's leading dimension one too large.
fn planted_lda(lda: c_int) -> c_int {
    if crate::plant() == Some("gemm-lda") {
        lda + 1
    } else {
        lda
    }
}

fn ld(x: c_int) -> Result<usize, Status> {
    usize::try_from(x).map_err(|_| INVALID_VALUE)
}

#[no_mangle]
pub unsafe extern "C" fn cublasSgemm_v2(
    h: *mut c_void,
    transa: u32,
    transb: u32,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: *const f32,
    a: *const f32,
    lda: c_int,
    b: *const f32,
    ldb: c_int,
    beta: *const f32,
    c: *mut f32,
    ldc: c_int,
) -> Status {
    let h = match handle(h) {
        Ok(h) => h,
        Err(e) => return e,
    };
    let load = if h.math & !16 == TF32_TENSOR_OP_MATH {
        Load::F32Rounded(10)
    } else {
        Load::F32
    };
    let (Ok(lda), Ok(ldb)) = (ld(planted_lda(lda)), ld(ldb)) else {
        return INVALID_VALUE;
    };
    if alpha.is_null() || beta.is_null() {
        return INVALID_VALUE;
    }
    gemm(Product {
        name: "cublasSgemm",
        transa,
        transb,
        m,
        n,
        k,
        a: Operand {
            ptr: a as usize,
            load,
            ld: lda,
            trans: transa != 0,
        },
        b: Operand {
            ptr: b as usize,
            load,
            ld: ldb,
            trans: transb != 0,
        },
        c: c as usize,
        c_bf16: false,
        ldc,
        alpha,
        beta,
    })
}

#[no_mangle]
pub unsafe extern "C" fn cublasGemmEx(
    h: *mut c_void,
    transa: u32,
    transb: u32,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: *const c_void,
    a: *const c_void,
    a_type: u32,
    lda: c_int,
    b: *const c_void,
    b_type: u32,
    ldb: c_int,
    beta: *const c_void,
    c: *mut c_void,
    c_type: u32,
    ldc: c_int,
    compute: u32,
    _algo: c_int,
) -> Status {
    let h = match handle(h) {
        Ok(h) => h,
        Err(e) => return e,
    };
    // The combinations cuBLAS documents for fp32 compute with these types.
    let tf32_mode = h.math & !16 == TF32_TENSOR_OP_MATH;
    let load = |t: u32| -> Result<Load, Status> {
        match (t, compute) {
            (R_16BF, COMPUTE_32F | COMPUTE_32F_PEDANTIC) => Ok(Load::Bf16),
            (R_32F, COMPUTE_32F) if tf32_mode => Ok(Load::F32Rounded(10)),
            (R_32F, COMPUTE_32F | COMPUTE_32F_PEDANTIC) => Ok(Load::F32),
            (R_32F, COMPUTE_32F_FAST_16BF) => Ok(Load::F32Rounded(7)),
            (R_32F, COMPUTE_32F_FAST_TF32) => Ok(Load::F32Rounded(10)),
            _ => Err(NOT_SUPPORTED),
        }
    };
    let (la, lb) = match (load(a_type), load(b_type)) {
        (Ok(la), Ok(lb)) => (la, lb),
        _ => {
            report(&format!(
                "cublasGemmEx: types A {a_type}, B {b_type}, C {c_type} with compute type \
                 {compute} are not emulated"
            ));
            return NOT_SUPPORTED;
        }
    };
    // Mixed operand types are not a cuBLAS combination.
    if a_type != b_type || !(c_type == R_32F || (c_type == R_16BF && a_type == R_16BF)) {
        return NOT_SUPPORTED;
    }
    let (Ok(lda), Ok(ldb)) = (ld(planted_lda(lda)), ld(ldb)) else {
        return INVALID_VALUE;
    };
    if alpha.is_null() || beta.is_null() {
        return INVALID_VALUE;
    }
    gemm(Product {
        name: "cublasGemmEx",
        transa,
        transb,
        m,
        n,
        k,
        a: Operand {
            ptr: a as usize,
            load: la,
            ld: lda,
            trans: transa != 0,
        },
        b: Operand {
            ptr: b as usize,
            load: lb,
            ld: ldb,
            trans: transb != 0,
        },
        c: c as usize,
        c_bf16: c_type == R_16BF,
        ldc,
        alpha: alpha as *const f32,
        beta: beta as *const f32,
    })
}

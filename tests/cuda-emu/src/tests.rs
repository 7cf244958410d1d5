//! The emulator's own tests, through its exported entry points: that it
//! runs correct code right, and that the faults a GPU would hit (or hide)
//! fail here. The backend-level checks (every op of kernels.cu, and the
//! three planted faults caught by the op conformance suite) are in the
//! trainer's CUDA tests, which run against this library.

use crate::blas::*;
use crate::driver::*;
use crate::status;
use std::ffi::c_void;
use std::sync::Mutex;

/// Tests share one device and its sticky error, so they run one at a time
/// and each starts with a clean error state.
static SERIAL: Mutex<()> = Mutex::new(());

fn setup() -> std::sync::MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    crate::device().sticky = status::SUCCESS;
    unsafe {
        assert_eq!(cuInit(0), 0);
        let mut ctx = std::ptr::null_mut();
        assert_eq!(cuDevicePrimaryCtxRetain(&mut ctx, 0), 0);
        assert_eq!(cuCtxSetCurrent(ctx), 0);
    }
    guard
}

fn upload<T: Copy>(data: &[T]) -> CUdeviceptr {
    let bytes = std::mem::size_of_val(data);
    let mut p = 0;
    unsafe {
        assert_eq!(cuMemAlloc_v2(&mut p, bytes), 0);
        assert_eq!(cuMemcpyHtoD_v2(p, data.as_ptr() as *const c_void, bytes), 0);
    }
    p
}

fn download<T: Copy + Default>(p: CUdeviceptr, n: usize) -> Vec<T> {
    let mut out = vec![T::default(); n];
    let bytes = std::mem::size_of_val(&out[..]);
    assert_eq!(
        unsafe { cuMemcpyDtoH_v2(out.as_mut_ptr() as *mut c_void, p, bytes) },
        0
    );
    out
}

/// A module of the self-test kernels, from PTX written the way NVRTC
/// writes it (entries with typed parameters, and a shared array).
fn selftest_module() -> *mut c_void {
    let mut ptx = String::from(".version 9.0\n.target sm_90\n.address_size 64\n");
    for k in crate::kernels::selftest_kernels() {
        let name = k.name();
        let params: Vec<String> = (0..)
            .zip(k.param_sizes().iter().map(|&b| b as u32))
            .map(|(i, b)| {
                format!(
                    "\t.param .{} {name}_param_{i}",
                    if b == 8 { "u64" } else { "u32" }
                )
            })
            .collect();
        ptx.push_str(&format!(
            ".visible .entry {name}(\n{}\n)\n{{\n\t.shared .align 4 .b8 part[128];\n\tret;\n}}\n",
            params.join(",\n")
        ));
    }
    let ptx = std::ffi::CString::new(ptx).unwrap();
    let mut m = std::ptr::null_mut();
    assert_eq!(
        unsafe { cuModuleLoadData(&mut m, ptx.as_ptr() as *const c_void) },
        0
    );
    m
}

fn function(m: *mut c_void, name: &str) -> *mut c_void {
    let name = std::ffi::CString::new(name).unwrap();
    let mut f = std::ptr::null_mut();
    assert_eq!(unsafe { cuModuleGetFunction(&mut f, m, name.as_ptr()) }, 0);
    f
}

fn launch(
    f: *mut c_void,
    grid: [u32; 3],
    block: [u32; 3],
    shared: u32,
    args: &mut [*mut c_void],
) -> u32 {
    unsafe {
        cuLaunchKernel(
            f,
            grid[0],
            grid[1],
            grid[2],
            block[0],
            block[1],
            block[2],
            shared,
            std::ptr::null_mut(),
            args.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
}

#[test]
fn block_reduction_is_exact_and_a_missing_barrier_is_caught() {
    let _g = setup();
    let m = selftest_module();
    let blocks = 8usize;
    let x: Vec<f32> = (0..256 * blocks).map(|i| (i % 97) as f32).collect();
    let want: Vec<f32> = x.chunks(256).map(|c| c.iter().sum()).collect();
    let dx = upload(&x);
    for (name, racy) in [("st_block_sum", false), ("st_block_sum_racy", true)] {
        let dout = upload(&vec![0f32; blocks]);
        let (mut a, mut b) = (dx, dout);
        let mut args = [
            &mut a as *mut _ as *mut c_void,
            &mut b as *mut _ as *mut c_void,
        ];
        assert_eq!(
            launch(
                function(m, name),
                [blocks as u32, 1, 1],
                [256, 1, 1],
                0,
                &mut args
            ),
            0
        );
        let got: Vec<f32> = download(dout, blocks);
        if racy {
            // Thread 0 reads all eight partials; with the fibers in a fresh
            // random order every round, some block reads one early.
            assert!(got != want, "the race went unnoticed: {got:?}");
        } else {
            assert_eq!(got, want);
        }
    }
}

#[test]
fn shuffles_follow_cuda_semantics() {
    let _g = setup();
    let m = selftest_module();
    let out = upload(&[0i32; 128]);
    let mut p = out;
    let mut args = [&mut p as *mut _ as *mut c_void];
    assert_eq!(
        launch(
            function(m, "st_shuffles"),
            [1, 1, 1],
            [32, 1, 1],
            0,
            &mut args
        ),
        0
    );
    let got: Vec<i32> = download(out, 128);
    for lane in 0..32i32 {
        let row = &got[lane as usize * 4..][..4];
        let down = if lane + 3 < 32 { lane + 3 } else { lane };
        let up = if lane >= 2 { lane - 2 } else { lane };
        assert_eq!(row, [down, up, lane ^ 5, 7], "lane {lane}");
    }
}

#[test]
fn indices_cover_3d_blocks_and_grids() {
    let _g = setup();
    let m = selftest_module();
    let (grid, block) = ([2u32, 3, 2], [4u32, 2, 3]);
    let n = grid.iter().product::<u32>() * block.iter().product::<u32>();
    let out = upload(&vec![u32::MAX; 2 * n as usize]);
    let mut p = out;
    let mut args = [&mut p as *mut _ as *mut c_void];
    assert_eq!(
        launch(function(m, "st_indices"), grid, block, 0, &mut args),
        0
    );
    let got: Vec<u32> = download(out, 2 * n as usize);
    let per = block.iter().product::<u32>();
    for i in 0..n {
        assert_eq!(got[2 * i as usize], i % per);
        assert_eq!(got[2 * i as usize + 1], i / per);
    }
}

#[test]
fn a_mask_that_leaves_out_a_caller_fails_the_launch() {
    let _g = setup();
    let m = selftest_module();
    let out = upload(&[0f32; 32]);
    let mut p = out;
    let mut args = [&mut p as *mut _ as *mut c_void];
    assert_eq!(
        launch(
            function(m, "st_bad_mask"),
            [1, 1, 1],
            [32, 1, 1],
            0,
            &mut args
        ),
        status::LAUNCH_FAILED
    );
    // Sticky, as after a GPU fault.
    assert_eq!(unsafe { cuCtxSynchronize() }, status::LAUNCH_FAILED);
}

#[test]
fn threads_waiting_for_each_other_are_a_deadlock_error() {
    let _g = setup();
    let m = selftest_module();
    let out = upload(&[0f32; 64]);
    let mut p = out;
    let mut args = [&mut p as *mut _ as *mut c_void];
    assert_eq!(
        launch(
            function(m, "st_deadlock"),
            [1, 1, 1],
            [64, 1, 1],
            0,
            &mut args
        ),
        status::LAUNCH_FAILED
    );
}

#[test]
fn a_write_past_the_end_is_an_illegal_address() {
    let _g = setup();
    let m = selftest_module();
    let n = 37i32;
    let buf = upload(&vec![0f32; n as usize]);
    let (mut p, mut len) = (buf, n);
    let mut args = [
        &mut p as *mut _ as *mut c_void,
        &mut len as *mut _ as *mut c_void,
    ];
    assert_eq!(
        launch(
            function(m, "st_write_past_end"),
            [1, 1, 1],
            [32, 1, 1],
            0,
            &mut args
        ),
        status::ILLEGAL_ADDRESS
    );
    assert_eq!(unsafe { cuCtxSynchronize() }, status::ILLEGAL_ADDRESS);
    // One element short of the end is fine (fresh state).
    crate::device().sticky = status::SUCCESS;
    let mut len = n - 1;
    let mut args = [
        &mut p as *mut _ as *mut c_void,
        &mut len as *mut _ as *mut c_void,
    ];
    assert_eq!(
        launch(
            function(m, "st_write_past_end"),
            [1, 1, 1],
            [32, 1, 1],
            0,
            &mut args
        ),
        0
    );
}

#[test]
fn a_write_before_the_start_is_caught() {
    let _g = setup();
    let m = selftest_module();
    // A page-sized buffer starts right after the lower guard page: faults.
    // A smaller one has canary bytes before it: found when it is freed.
    for (n, launch_status, free_status) in [
        (1024i32, status::ILLEGAL_ADDRESS, status::ILLEGAL_ADDRESS),
        (37, status::SUCCESS, status::SUCCESS),
    ] {
        crate::device().sticky = status::SUCCESS;
        let buf = upload(&vec![0f32; n as usize]);
        let (mut p, mut len) = (buf, n);
        let mut args = [
            &mut p as *mut _ as *mut c_void,
            &mut len as *mut _ as *mut c_void,
        ];
        let f = function(m, "st_write_before_start");
        assert_eq!(
            launch(f, [1, 1, 1], [32, 1, 1], 0, &mut args),
            launch_status,
            "n = {n}"
        );
        if launch_status == status::SUCCESS {
            assert_eq!(unsafe { cuMemFree_v2(buf) }, free_status);
            assert_eq!(
                unsafe { cuCtxSynchronize() },
                status::ILLEGAL_ADDRESS,
                "n = {n}"
            );
        }
    }
}

#[test]
fn launch_limits_are_the_drivers() {
    let _g = setup();
    let m = selftest_module();
    let f = function(m, "st_shuffles");
    let out = upload(&vec![0i32; 4 * 2048]);
    let mut p = out;
    let mut args = [&mut p as *mut _ as *mut c_void];
    for (grid, block, shared) in [
        ([1, 1, 1], [1025, 1, 1], 0),
        ([1, 1, 1], [32, 33, 1], 0),
        ([1, 1, 1], [32, 1, 65], 0),
        ([1, 65_536, 1], [32, 1, 1], 0),
        ([0, 1, 1], [32, 1, 1], 0),
        ([1, 1, 1], [32, 1, 1], 48 * 1024),
    ] {
        assert_eq!(
            launch(f, grid, block, shared, &mut args),
            status::INVALID_VALUE,
            "grid {grid:?} block {block:?} shared {shared}"
        );
    }
    // Opting in raises the shared-memory limit, up to the device's.
    assert_eq!(unsafe { cuFuncSetAttribute(f, 8, 100 * 1024) }, 0);
    assert_eq!(launch(f, [1, 1, 1], [32, 1, 1], 100 * 1024, &mut args), 0);
    assert_eq!(
        unsafe { cuFuncSetAttribute(f, 8, 228 * 1024) },
        status::INVALID_VALUE
    );
}

#[test]
fn copies_outside_an_allocation_are_refused() {
    let _g = setup();
    let p = upload(&[0f32; 16]);
    let host = [0u8; 128];
    unsafe {
        assert_eq!(cuMemcpyHtoD_v2(p, host.as_ptr() as *const c_void, 64), 0);
        assert_eq!(
            cuMemcpyHtoD_v2(p, host.as_ptr() as *const c_void, 65),
            status::INVALID_VALUE
        );
        assert_eq!(
            cuMemcpyHtoD_v2(p + 4, host.as_ptr() as *const c_void, 64),
            status::INVALID_VALUE
        );
        assert_eq!(cuMemFree_v2(p + 4), status::INVALID_VALUE);
        assert_eq!(cuMemFree_v2(p), 0);
        assert_eq!(
            cuMemcpyHtoD_v2(p, host.as_ptr() as *const c_void, 4),
            status::INVALID_VALUE
        );
    }
}

/// Column-major reference: C = op(A) op(B), A stored with `lda` rows.
#[allow(clippy::too_many_arguments)]
fn reference(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for j in 0..n {
        for i in 0..m {
            let mut acc = 0f32;
            for l in 0..k {
                let x = if ta { a[l + i * lda] } else { a[i + l * lda] };
                let y = if tb { b[j + l * ldb] } else { b[l + j * ldb] };
                acc += x * y;
            }
            c[i + j * m] = acc;
        }
    }
    c
}

fn blas() -> *mut c_void {
    let mut h = std::ptr::null_mut();
    assert_eq!(unsafe { cublasCreate_v2(&mut h) }, 0);
    h
}

#[allow(clippy::too_many_arguments)]
fn sgemm(
    h: *mut c_void,
    ta: bool,
    tb: bool,
    (m, n, k): (usize, usize, usize),
    a: CUdeviceptr,
    lda: usize,
    b: CUdeviceptr,
    ldb: usize,
    c: CUdeviceptr,
) -> u32 {
    let (alpha, beta) = (1f32, 0f32);
    unsafe {
        cublasSgemm_v2(
            h,
            ta as u32,
            tb as u32,
            m as i32,
            n as i32,
            k as i32,
            &alpha,
            a as usize as *const f32,
            lda as i32,
            b as usize as *const f32,
            ldb as i32,
            &beta,
            c as usize as *mut f32,
            m as i32,
        )
    }
}

#[test]
fn sgemm_is_column_major_with_transposes_and_leading_dimensions() {
    let _g = setup();
    let h = blas();
    let (m, n, k) = (5usize, 3usize, 4usize);
    let vals = |len: usize, s: f32| -> Vec<f32> {
        (0..len).map(|i| ((i * 7 % 11) as f32 - 5.0) * s).collect()
    };
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        // Leading dimensions larger than the rows, to tell them apart.
        let (ra, ca) = if ta { (k, m) } else { (m, k) };
        let (rb, cb) = if tb { (n, k) } else { (k, n) };
        let (lda, ldb) = (ra + 2, rb + 1);
        let a = vals(lda * ca, 0.5);
        let b = vals(ldb * cb, 0.25);
        let want = reference(ta, tb, m, n, k, &a, lda, &b, ldb);
        let (da, db, dc) = (upload(&a), upload(&b), upload(&vec![f32::NAN; m * n]));
        assert_eq!(sgemm(h, ta, tb, (m, n, k), da, lda, db, ldb, dc), 0);
        assert_eq!(download::<f32>(dc, m * n), want, "ta {ta} tb {tb}");
        // The same call with the other transpose of A, or a leading
        // dimension one short, gives other numbers.
        if ra == ca {
            continue;
        }
        assert_eq!(sgemm(h, ta, tb, (m, n, k), da, lda - 1, db, ldb, dc), 0);
        assert_ne!(download::<f32>(dc, m * n), want);
    }
    // A leading dimension below the stored rows is invalid; one that
    // reaches past the buffer is a fault.
    let (da, db, dc) = (
        upload(&[1f32; 20]),
        upload(&[1f32; 12]),
        upload(&[0f32; 15]),
    );
    assert_eq!(sgemm(h, false, false, (m, n, k), da, m - 1, db, k, dc), 7);
    assert_eq!(sgemm(h, false, false, (m, n, k), da, m + 1, db, k, dc), 13);
    assert_eq!(unsafe { cuCtxSynchronize() }, status::ILLEGAL_ADDRESS);
}

#[test]
fn gemm_ex_reads_bf16_exactly_and_accumulates_in_fp32() {
    let _g = setup();
    let h = blas();
    let (m, n, k) = (4usize, 3usize, 64usize);
    let a: Vec<f32> = (0..m * k).map(|i| 1.0 + (i as f32) * 1e-3).collect();
    let b: Vec<f32> = (0..k * n).map(|i| 0.5 - (i as f32) * 7e-4).collect();
    let bf = |x: &[f32]| -> Vec<u16> {
        x.iter()
            .map(|&v| (round_mantissa(v, 7).to_bits() >> 16) as u16)
            .collect()
    };
    let widen = |x: &[u16]| -> Vec<f32> {
        x.iter()
            .map(|&v| f32::from_bits((v as u32) << 16))
            .collect()
    };
    let (a16, b16) = (bf(&a), bf(&b));
    let want = reference(false, false, m, n, k, &widen(&a16), m, &widen(&b16), k);
    let exact = reference(false, false, m, n, k, &a, m, &b, k);
    let (da, db, dc) = (upload(&a16), upload(&b16), upload(&vec![0f32; m * n]));
    let (alpha, beta) = (1f32, 0f32);
    let r = unsafe {
        cublasGemmEx(
            h,
            0,
            0,
            m as i32,
            n as i32,
            k as i32,
            &alpha as *const f32 as *const c_void,
            da as usize as *const c_void,
            14,
            m as i32,
            db as usize as *const c_void,
            14,
            k as i32,
            &beta as *const f32 as *const c_void,
            dc as usize as *mut c_void,
            0,
            m as i32,
            68,
            -1,
        )
    };
    assert_eq!(r, 0);
    let got: Vec<f32> = download(dc, m * n);
    assert_eq!(got, want);
    assert!(
        got.iter().zip(&exact).any(|(g, e)| g != e),
        "bf16 rounding had no effect"
    );
}

#[test]
fn mantissa_rounding_is_to_nearest_even() {
    assert_eq!(round_mantissa(1.0 + 2f32.powi(-8), 7), 1.0); // tie, to even
    assert_eq!(
        round_mantissa(1.0 + 3.0 * 2f32.powi(-8), 7),
        1.0 + 2f32.powi(-6)
    ); // tie, to even (up)
    assert_eq!(
        round_mantissa(1.0 + 2f32.powi(-8) + 2f32.powi(-20), 7),
        1.0 + 2f32.powi(-7)
    );
    assert!(round_mantissa(f32::NAN, 7).is_nan());
}

/// The PTX reader on NVRTC's own layout (entries, typed parameters, a
/// demoted shared array, nested braces), and the loader refusing an entry
/// whose parameters differ from the CPU build.
#[test]
fn ptx_entries_are_read_and_checked_against_the_cpu_build() {
    let _g = setup();
    let ptx = "
.func  (.param .align 8 .b8 func_retval0[16]) helper(
	.param .b64 helper_param_0
)
{
	ret;
}
.visible .entry st_write_past_end(
	.param .u64 .ptr .global .align 4 st_write_past_end_param_0,
	.param .u32 st_write_past_end_param_1
)
{
	.reg .b32 %r<4>;
	.shared .align 8 .b8 _ZZ17st_write_past_endE7scratch[256];
	{
	.reg .b32 temp;
	}
	ret;
}
";
    let entries = crate::kernels::parse_ptx(ptx).unwrap();
    assert_eq!(
        entries,
        [crate::kernels::Entry {
            name: "st_write_past_end".into(),
            params: vec![8, 4],
            shared_bytes: 256,
        }]
    );
    assert!(crate::kernels::load(ptx).is_ok());
    let wrong = ptx.replace(
        ".param .u32 st_write_past_end_param_1",
        ".param .u64 st_write_past_end_param_1",
    );
    assert!(crate::kernels::load(&wrong)
        .err()
        .unwrap()
        .contains("parameter sizes"));
    let unknown = ptx.replace("st_write_past_end", "kb_not_a_kernel");
    assert!(crate::kernels::load(&unknown)
        .err()
        .unwrap()
        .contains("no CPU build"));
}

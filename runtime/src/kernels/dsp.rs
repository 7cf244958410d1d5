//! Armv7E-M / Armv8-M DSP-extension kernels (Cortex-M4, M7, M33): the q8
//! block dot product with `SMLAD`, two signed 16x16 multiply-adds per
//! instruction. `SXTB16` sign-extends bytes 0 and 2 (and, rotated by 8,
//! bytes 1 and 3) of a word into two halfwords, so four byte products cost
//! two `SXTB16` pairs and two `SMLAD`s instead of four loads, multiplies and
//! adds. The sum is an exact i32, so results equal the scalar loop's bit for
//! bit (the firmware checks it on the emulator: `tests/firmware`).

use core::arch::asm;

#[inline(always)]
fn sxtb16(x: u32) -> u32 {
    let out: u32;
    // SAFETY: register-only DSP instruction, present on every target this
    // module is compiled for (cfg `kilobyte_dsp`, see build.rs).
    unsafe {
        asm!("sxtb16 {o}, {i}", o = out(reg) out, i = in(reg) x, options(pure, nomem, nostack))
    };
    out
}

#[inline(always)]
fn sxtb16_ror8(x: u32) -> u32 {
    let out: u32;
    // SAFETY: as above.
    unsafe {
        asm!("sxtb16 {o}, {i}, ror #8", o = out(reg) out, i = in(reg) x, options(pure, nomem, nostack))
    };
    out
}

#[inline(always)]
fn smlad(a: u32, b: u32, acc: i32) -> i32 {
    let out: i32;
    // SAFETY: as above.
    unsafe {
        asm!("smlad {o}, {a}, {b}, {c}", o = out(reg) out, a = in(reg) a, b = in(reg) b, c = in(reg) acc,
            options(pure, nomem, nostack))
    };
    out
}

/// `sum a[i] * b[i]` over the common length (the q8 block dot product).
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let n = a.len().min(b.len());
    let words = n / 4;
    let mut acc = 0i32;
    for i in 0..words {
        // Blocks are byte-aligned; Armv7-M loads unaligned words natively.
        // SAFETY: i * 4 + 4 <= n bounds both reads.
        let (wa, wb) = unsafe {
            (
                a.as_ptr().add(4 * i).cast::<u32>().read_unaligned(),
                b.as_ptr().add(4 * i).cast::<u32>().read_unaligned(),
            )
        };
        acc = smlad(sxtb16(wa), sxtb16(wb), acc);
        acc = smlad(sxtb16_ror8(wa), sxtb16_ror8(wb), acc);
    }
    for i in 4 * words..n {
        acc += a[i] as i32 * b[i] as i32;
    }
    acc
}

//! Runs both model families on a Cortex-M4F from flash: greedy MEGABYTE
//! generation and BiGS classification, with `static` arenas sized at compile
//! time by the runtime's `const fn` layouts (aligned, so without slack) and
//! handed out by `StaticArena::take` (no `static mut`, no `unsafe`). Prints
//! over semihosting (the output tests/firmware/run.sh compares with the host
//! CLI), then the RAM and speed figures, and exits with semihosting's exit
//! code.
#![no_std]
#![no_main]
// The baseline build (see run_megabyte) leaves the model imports unused.
#![cfg_attr(feature = "baseline", allow(unused_imports, dead_code))]

use core::ptr::{addr_of, addr_of_mut};
use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprint, hprintln};
use kilobyte_format::{include_model, BigsConfig, MegabyteConfig, ModelConfig, ModelFile};
use kilobyte_runtime::{ArenaSpec, Bigs, Megabyte, StaticArena};

static MEGABYTE_KBM: &[u8] = include_model!(env!("KILOBYTE_FW_MEGABYTE"));
static BIGS_KBM: &[u8] = include_model!(env!("KILOBYTE_FW_BIGS"));

/// The shapes the embedded models must have (checked at start-up).
const MEGABYTE: MegabyteConfig = MegabyteConfig::MICRO;
/// What `kilobyte init --model bigs --labels neg,pos` makes: both heads and
/// the default n-gram logits for two classes.
const BIGS: BigsConfig = BigsConfig::MICRO.classifier(2, true);
const CONTEXT: usize = 512;
const BIGS_LEN: usize = 128;
const SPEC: ArenaSpec = ArenaSpec::new(CONTEXT).with_i8_cache();
const MEGABYTE_ARENA: usize = SPEC.layout(&MEGABYTE).bytes();
const BIGS_ARENA: usize = Bigs::layout(&BIGS, BIGS_LEN).bytes();

static MEGABYTE_MEM: StaticArena<MEGABYTE_ARENA> = StaticArena::new();
static BIGS_MEM: StaticArena<BIGS_ARENA> = StaticArena::new();

pub const PROMPT: &[u8] = b"Once upon a time";
pub const GENERATE: usize = 32;
pub const SENTENCES: [&str; 3] = ["a fine film", "dull and long", "x"];

const PAINT: u32 = 0x5a5a_a5a5;

extern "C" {
    static mut __sheap: u32;
}

fn fail(what: &str) -> ! {
    hprintln!("error: {}", what);
    debug::exit(debug::EXIT_FAILURE);
    loop {}
}

/// Centiseconds of (virtual) time from semihosting's SYS_CLOCK; under
/// `qemu -icount shift=0` one instruction is one nanosecond.
fn clock_cs() -> usize {
    // SAFETY: SYS_CLOCK (0x10) takes no argument.
    unsafe { cortex_m_semihosting::syscall1!(CLOCK, 0) }
}

/// Fills the unused stack below the current frame with a pattern.
#[inline(never)]
fn paint_stack() -> (usize, usize) {
    let bottom = addr_of_mut!(__sheap) as usize;
    let sp = cortex_m::register::msp::read() as usize;
    let mut p = bottom;
    while p < sp - 256 {
        // SAFETY: between the end of static data and the live stack.
        unsafe { (p as *mut u32).write_volatile(PAINT) };
        p += 4;
    }
    (bottom, sp)
}

fn stack_used(bottom: usize, top: usize) -> usize {
    let mut p = bottom;
    // SAFETY: reads the region painted above.
    while p < top && unsafe { (p as *const u32).read_volatile() } == PAINT {
        p += 4;
    }
    top - p
}

/// The SMLAD q8 dot product against the plain loop on pseudo-random blocks
/// (and the extremes), then both timed on the same blocks.
fn check_dsp() {
    use kilobyte_runtime::kernels::{dsp, scalar};
    let mut rng = kilobyte_runtime::rng::Rng::new(5);
    let mut a = [0i8; 32];
    let mut b = [0i8; 32];
    for trial in 0..2000 {
        for (x, y) in a.iter_mut().zip(b.iter_mut()) {
            *x = rng.next_u64() as i8;
            *y = rng.next_u64() as i8;
        }
        if trial == 0 {
            a = [-128; 32];
            b = [-128; 32];
        }
        if dsp::dot_i8(&a, &b) != scalar::dot_i8_plain(&a, &b) {
            fail("SMLAD dot product differs from the scalar loop");
        }
    }
    let reps = 1_000_000;
    let t0 = clock_cs();
    let mut sink = 0i32;
    for i in 0..reps {
        a[i % 32] = i as i8;
        sink = sink.wrapping_add(dsp::dot_i8(core::hint::black_box(&a), &b));
    }
    let t1 = clock_cs();
    for i in 0..reps {
        a[i % 32] = i as i8;
        sink = sink.wrapping_add(scalar::dot_i8_plain(core::hint::black_box(&a), &b));
    }
    let t2 = clock_cs();
    core::hint::black_box(sink);
    hprintln!(
        "smlad: 2000 blocks equal the scalar loop; {} blocks: smlad {} cs, scalar {} cs",
        reps,
        t1 - t0,
        t2 - t1
    );
}

/// Greedy generation from the prompt; returns the clock before prefill,
/// after prefill and after generating.
#[cfg(not(feature = "baseline"))]
fn run_megabyte() -> (usize, usize, usize) {
    let file = ModelFile::parse(MEGABYTE_KBM).unwrap_or_else(|_| fail("MEGABYTE model"));
    if *file.config() != ModelConfig::Megabyte(MEGABYTE) {
        fail("the MEGABYTE model is not the micro preset");
    }
    let model = Megabyte::from_file(&file).unwrap_or_else(|_| fail("MEGABYTE load"));
    let arena = MEGABYTE_MEM.take().unwrap_or_else(|| fail("arena taken"));
    let mut s = model
        .session_in(arena, SPEC)
        .unwrap_or_else(|_| fail("session"));
    let t0 = clock_cs();
    s.prefill(PROMPT).unwrap_or_else(|_| fail("prefill"));
    let t1 = clock_cs();
    hprint!("generate");
    for _ in 0..GENERATE {
        let b = kilobyte_runtime::sampling::argmax(s.logits());
        s.push(b).unwrap_or_else(|_| fail("push"));
        hprint!(" {:02x}", b);
    }
    let t2 = clock_cs();
    hprintln!("");
    (t0, t1, t2)
}

/// Classifies the sentences; returns the clock before and after.
#[cfg(not(feature = "baseline"))]
fn run_bigs() -> (usize, usize) {
    let file = ModelFile::parse(BIGS_KBM).unwrap_or_else(|_| fail("BiGS model"));
    if *file.config() != ModelConfig::Bigs(BIGS) {
        fail("the BiGS model is not a micro classifier with 2 classes");
    }
    let bigs = Bigs::from_file(&file).unwrap_or_else(|_| fail("BiGS load"));
    let arena = BIGS_MEM.take().unwrap_or_else(|| fail("arena taken"));
    let mut enc = bigs
        .encoder_in(arena, BIGS_LEN)
        .unwrap_or_else(|_| fail("encoder"));
    let t3 = clock_cs();
    for text in SENTENCES {
        let c = enc.classify(text.as_bytes()).unwrap_or_else(|_| fail("classify"));
        hprintln!("class {}", bigs.label(c.class).unwrap_or("?"));
    }
    (t3, clock_cs())
}

// The `baseline` build: the same firmware printing the same kinds of values
// without the models, so that run.sh can report the code the runtime adds
// (.text of the full build minus .text of this one).
#[cfg(feature = "baseline")]
fn run_megabyte() -> (usize, usize, usize) {
    let t0 = clock_cs();
    hprint!("generate");
    for &b in core::hint::black_box(PROMPT) {
        hprint!(" {:02x}", b);
    }
    hprintln!("");
    let _ = (addr_of!(MEGABYTE_KBM), addr_of!(MEGABYTE_MEM));
    (t0, t0, clock_cs())
}

#[cfg(feature = "baseline")]
fn run_bigs() -> (usize, usize) {
    let t3 = clock_cs();
    for text in core::hint::black_box(SENTENCES) {
        hprintln!("class {}", text);
    }
    let _ = (addr_of!(BIGS_KBM), addr_of!(BIGS_MEM));
    (t3, clock_cs())
}

#[entry]
fn main() -> ! {
    let (bottom, _) = paint_stack();
    let top = 0x2000_0000 + 4 * 1024 * 1024;
    check_dsp();

    let (t0, t1, t2) = run_megabyte();
    let (t3, t4) = run_bigs();

    hprintln!(
        "arena megabyte {} bigs {} bytes; stack high-water {} bytes",
        MEGABYTE_ARENA,
        BIGS_ARENA,
        stack_used(bottom, top)
    );
    hprintln!(
        "clock_cs prefill {} generate {} ({} bytes) classify {} ({} sentences)",
        t1 - t0,
        t2 - t1,
        GENERATE,
        t4 - t3,
        SENTENCES.len()
    );
    let _ = addr_of!(MEGABYTE_MEM);
    debug::exit(debug::EXIT_SUCCESS);
    loop {}
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    hprintln!("panic");
    debug::exit(debug::EXIT_FAILURE);
    loop {}
}

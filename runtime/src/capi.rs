//! The C ABI (feature `capi`): load a model from bytes, size and create a
//! MEGABYTE session or a BiGS encoder over caller memory, prompt, generate
//! (greedy or with a seeded sampler), classify and fill. The header is
//! `runtime/include/kilobyte.h`. The same functions are the WebAssembly
//! module's exports (`tests/wasm/`, `web/`): a JavaScript caller places the
//! objects in memory it grows itself.
//!
//! Nothing here allocates: the caller gives storage for each object (sizes
//! from `kb_*_size`, aligned to 16 bytes) and the arena. Every function
//! returns a [`KbStatus`] code; `kb_status_message` names it. Pointers are
//! checked for null; lengths are the caller's promise, as everywhere in C.
//!
//! Lifetimes are the C caller's to keep: the model bytes must outlive the
//! model, and the model and arena must outlive its sessions and encoders.
//! Build it with `cargo rustc -p kilobyte-runtime --release --features
//! capi-staticlib --crate-type staticlib` (with
//! `CARGO_PROFILE_RELEASE_PANIC=abort`): `capi-staticlib` adds the panic
//! handler a standalone no_std library needs (a Rust program that links the
//! runtime brings its own, so plain `capi` leaves it out).

use crate::bigs::Bigs;
use crate::error::RuntimeError;
use crate::kernels::{self, Isa};
use crate::megabyte::{ArenaSpec, Megabyte, Session};
use crate::{Encoder, Sampler, SamplerConfig};
use core::ffi::c_char;
use core::mem::{align_of, size_of};
use kilobyte_format::ModelFile;

/// Status codes (`KB_OK` ... in the header).
pub type KbStatus = i32;
pub const KB_OK: KbStatus = 0;
pub const KB_ERR_NULL: KbStatus = 1;
pub const KB_ERR_STORAGE: KbStatus = 2;
pub const KB_ERR_FORMAT: KbStatus = 3;
pub const KB_ERR_FAMILY: KbStatus = 4;
pub const KB_ERR_ARENA: KbStatus = 5;
pub const KB_ERR_INPUT: KbStatus = 6;
pub const KB_ERR_HEAD: KbStatus = 7;
pub const KB_ERR_INTERNAL: KbStatus = 8;

/// A loaded model, in caller storage (its size is what the caller
/// allocates, so the variants' size difference costs nothing).
#[allow(clippy::large_enum_variant)]
pub enum KbModel {
    Megabyte(Megabyte<'static>),
    Bigs(Bigs<'static>),
}

/// A MEGABYTE session, in caller storage.
pub struct KbSession(Session<'static, 'static>);

/// A BiGS encoder, in caller storage.
pub struct KbEncoder(Encoder<'static, 'static>);

/// Sampling settings and the random state they draw from, in caller storage.
pub struct KbSampler(Sampler);

/// Storage alignment the C side must provide.
const STORAGE_ALIGN: usize = 16;

fn status(e: RuntimeError) -> KbStatus {
    match e {
        RuntimeError::Format(_) | RuntimeError::NotFinite { .. } => KB_ERR_FORMAT,
        RuntimeError::WrongFamily { .. } => KB_ERR_FAMILY,
        RuntimeError::ArenaTooSmall { .. } => KB_ERR_ARENA,
        RuntimeError::BadContext { .. } | RuntimeError::TooManyLayers { .. } => KB_ERR_INPUT,
        RuntimeError::MissingHead { .. } => KB_ERR_HEAD,
        RuntimeError::Kernel(_) | RuntimeError::BadSampler { .. } => KB_ERR_INTERNAL,
    }
}

/// Writes `value` into caller storage after checking size and alignment.
///
/// # Safety
/// `storage` points to `len` writable bytes.
unsafe fn place<T>(storage: *mut u8, len: usize, value: T) -> Result<*mut T, KbStatus> {
    const { assert!(align_of::<T>() <= STORAGE_ALIGN) };
    if storage.is_null() {
        return Err(KB_ERR_NULL);
    }
    if len < size_of::<T>() || (storage as usize) % align_of::<T>() != 0 {
        return Err(KB_ERR_STORAGE);
    }
    let p = storage.cast::<T>();
    p.write(value);
    Ok(p)
}

macro_rules! try_status {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(s) => return s,
        }
    };
}

/// A slice from C, or `KB_ERR_NULL` for a null pointer with a non-zero length.
///
/// # Safety
/// A non-null `p` points to `len` initialised, aligned values that nothing
/// writes while the slice (lifetime `'a`, the caller's choice) lives.
unsafe fn slice<'a, T>(p: *const T, len: usize) -> Result<&'a [T], KbStatus> {
    if len == 0 {
        Ok(&[])
    } else if p.is_null() {
        Err(KB_ERR_NULL)
    } else {
        Ok(core::slice::from_raw_parts(p, len))
    }
}

/// A mutable slice from C, or `KB_ERR_NULL` as for [`slice`].
///
/// # Safety
/// A non-null `p` points to `len` initialised, aligned values that nothing
/// else reads or writes while the slice (lifetime `'a`) lives.
unsafe fn slice_mut<'a, T>(p: *mut T, len: usize) -> Result<&'a mut [T], KbStatus> {
    if len == 0 {
        Ok(&mut [])
    } else if p.is_null() {
        Err(KB_ERR_NULL)
    } else {
        Ok(core::slice::from_raw_parts_mut(p, len))
    }
}

#[no_mangle]
pub extern "C" fn kb_model_size() -> usize {
    size_of::<KbModel>()
}

#[no_mangle]
pub extern "C" fn kb_session_size() -> usize {
    size_of::<KbSession>()
}

#[no_mangle]
pub extern "C" fn kb_encoder_size() -> usize {
    size_of::<KbEncoder>()
}

#[no_mangle]
pub extern "C" fn kb_sampler_size() -> usize {
    size_of::<KbSampler>()
}

/// Chooses the SIMD kernels (`on != 0`) or the scalar reference ones, which
/// give the same bytes on every target (what a Cortex-M or the CLI with
/// `KILOBYTE_KERNELS=scalar` computes). Returns 1 if SIMD kernels are now
/// in use, 0 if this build or machine has none. Affects the whole program.
#[no_mangle]
pub extern "C" fn kb_set_simd(on: i32) -> i32 {
    let isa = if on != 0 {
        kernels::detected()
    } else {
        Isa::Scalar
    };
    // Scalar and the detected set are always accepted.
    let _ = kernels::set_isa(isa);
    i32::from(kernels::isa() != Isa::Scalar)
}

/// A static, NUL-terminated description of a status code.
#[no_mangle]
pub extern "C" fn kb_status_message(code: KbStatus) -> *const c_char {
    let s: &'static [u8] = match code {
        KB_OK => b"ok\0",
        KB_ERR_NULL => b"a required pointer is null\0",
        KB_ERR_STORAGE => b"object storage too small or not 16-byte aligned\0",
        KB_ERR_FORMAT => b"not a valid .kbm model (or its bytes are not 64-byte aligned)\0",
        KB_ERR_FAMILY => b"this operation needs the other model family\0",
        KB_ERR_ARENA => b"arena too small (see kb_arena_bytes)\0",
        KB_ERR_INPUT => b"input empty, too long for the context, or out of range\0",
        KB_ERR_HEAD => b"the model has no head for this operation\0",
        _ => b"internal error\0",
    };
    s.as_ptr().cast()
}

/// Parses and loads a model from `len` bytes at `data` (64-byte aligned,
/// kept alive and unchanged by the caller) into `storage`.
///
/// # Safety
/// `data` is null or holds `len` readable bytes that stay valid and
/// unchanged while the model and anything made from it are in use; `storage`
/// is null or holds `storage_len` writable bytes that nothing else touches
/// while the model lives; `out` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn kb_model_load(
    storage: *mut u8,
    storage_len: usize,
    data: *const u8,
    len: usize,
    out: *mut *mut KbModel,
) -> KbStatus {
    if out.is_null() {
        return KB_ERR_NULL;
    }
    let bytes: &'static [u8] = try_status!(slice(data, len));
    let file = match ModelFile::parse(bytes) {
        Ok(f) => f,
        Err(_) => return KB_ERR_FORMAT,
    };
    let model = match file.config() {
        kilobyte_format::ModelConfig::Megabyte(_) => {
            Megabyte::from_file(&file).map(KbModel::Megabyte)
        }
        kilobyte_format::ModelConfig::Bigs(_) => Bigs::from_file(&file).map(KbModel::Bigs),
    };
    let model = match model {
        Ok(m) => m,
        Err(e) => return status(e),
    };
    *out = try_status!(place(storage, storage_len, model));
    KB_OK
}

/// 1 for MEGABYTE, 2 for BiGS, 0 for a null model.
///
/// # Safety
/// `model` is null or came from [`kb_model_load`].
#[no_mangle]
pub unsafe extern "C" fn kb_model_family(model: *const KbModel) -> i32 {
    match model.as_ref() {
        Some(KbModel::Megabyte(_)) => 1,
        Some(KbModel::Bigs(_)) => 2,
        None => 0,
    }
}

/// The model's maximum input length in bytes (MEGABYTE's context T_max,
/// BiGS's longest input); 0 for a null model.
///
/// # Safety
/// `model` is null or came from [`kb_model_load`].
#[no_mangle]
pub unsafe extern "C" fn kb_model_max_len(model: *const KbModel) -> usize {
    match model.as_ref() {
        Some(KbModel::Megabyte(m)) => m.config.max_seq as usize,
        Some(KbModel::Bigs(b)) => b.config.max_seq as usize,
        None => 0,
    }
}

/// Arena bytes for a session (MEGABYTE, `max_len` bytes of context) or an
/// encoder (BiGS, inputs up to `max_len` bytes).
///
/// # Safety
/// `model` is null or came from [`kb_model_load`] and is still live; `out`
/// is null or writable.
#[no_mangle]
pub unsafe extern "C" fn kb_arena_bytes(
    model: *const KbModel,
    max_len: usize,
    out: *mut usize,
) -> KbStatus {
    let (Some(model), false) = (model.as_ref(), out.is_null()) else {
        return KB_ERR_NULL;
    };
    let bytes = match model {
        KbModel::Megabyte(m) => {
            let spec = ArenaSpec::new(max_len);
            if spec.check(&m.config).is_some() {
                return KB_ERR_INPUT;
            }
            spec.arena_bytes(&m.config)
        }
        KbModel::Bigs(b) => Bigs::arena_bytes(&b.config, max_len),
    };
    if bytes == 0 {
        return KB_ERR_INPUT;
    }
    *out = bytes;
    KB_OK
}

/// Creates a MEGABYTE generation session with `max_context` bytes of context.
///
/// # Safety
/// `model` is null or a live model from [`kb_model_load`]; `arena` is null
/// or holds `arena_len` writable bytes and `storage` `storage_len`, neither
/// read nor written by anything else while the session lives; the model
/// (and its bytes) and the arena outlive the session; `out` is null or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn kb_session_new(
    storage: *mut u8,
    storage_len: usize,
    model: *const KbModel,
    arena: *mut u8,
    arena_len: usize,
    max_context: usize,
    out: *mut *mut KbSession,
) -> KbStatus {
    let (Some(model), false) = (model.as_ref(), out.is_null()) else {
        return KB_ERR_NULL;
    };
    let KbModel::Megabyte(m) = model else {
        return KB_ERR_FAMILY;
    };
    let arena = try_status!(slice_mut(arena, arena_len));
    let session = match m.session(arena, ArenaSpec::new(max_context)) {
        Ok(s) => s,
        Err(e) => return status(e),
    };
    *out = try_status!(place(storage, storage_len, KbSession(session)));
    KB_OK
}

/// Feeds prompt bytes (patch-parallel prefill).
///
/// # Safety
/// `session` is null or a live session from [`kb_session_new`], not in use
/// by another call at the same time; `bytes` is null or holds `len` readable
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn kb_session_prompt(
    session: *mut KbSession,
    bytes: *const u8,
    len: usize,
) -> KbStatus {
    let Some(s) = session.as_mut() else {
        return KB_ERR_NULL;
    };
    let bytes = try_status!(slice(bytes, len));
    match s.0.prefill(bytes) {
        Ok(()) => KB_OK,
        Err(e) => status(e),
    }
}

/// Appends one byte to the session's context.
///
/// # Safety
/// `session` is null or a live session from [`kb_session_new`], not in use
/// by another call at the same time.
#[no_mangle]
pub unsafe extern "C" fn kb_session_push(session: *mut KbSession, byte: u8) -> KbStatus {
    let Some(s) = session.as_mut() else {
        return KB_ERR_NULL;
    };
    match s.0.push(byte) {
        Ok(()) => KB_OK,
        Err(e) => status(e),
    }
}

/// The most likely next byte (greedy), written to `out` and appended.
///
/// # Safety
/// `session` is null or a live session from [`kb_session_new`], not in use
/// by another call at the same time; `out` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn kb_session_next(session: *mut KbSession, out: *mut u8) -> KbStatus {
    let (Some(s), false) = (session.as_mut(), out.is_null()) else {
        return KB_ERR_NULL;
    };
    let b = crate::sampling::argmax(s.0.logits());
    *out = b;
    match s.0.push(b) {
        Ok(()) => KB_OK,
        Err(e) => status(e),
    }
}

/// Creates a sampler: `temperature` 0 is greedy, `top_k` 0 keeps all 256
/// bytes, `top_p` 1 turns nucleus sampling off; `seed` fixes the draws, so
/// the same settings give the bytes `kilobyte generate --seed` gives.
/// Settings out of range are `KB_ERR_INPUT`.
///
/// # Safety
/// `storage` is null or holds `storage_len` writable bytes that nothing
/// else touches while the sampler lives; `out` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn kb_sampler_new(
    storage: *mut u8,
    storage_len: usize,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    seed: u64,
    out: *mut *mut KbSampler,
) -> KbStatus {
    if out.is_null() {
        return KB_ERR_NULL;
    }
    let config = SamplerConfig {
        temperature,
        top_k,
        top_p,
        seed,
    };
    let Ok(sampler) = Sampler::new(config) else {
        return KB_ERR_INPUT;
    };
    *out = try_status!(place(storage, storage_len, KbSampler(sampler)));
    KB_OK
}

/// The next byte drawn by `sampler` from the session's logits, written to
/// `out` and appended to the context.
///
/// # Safety
/// `session` and `sampler` are null or live objects from their `_new`
/// functions, neither in use by another call at the same time; `out` is
/// null or writable.
#[no_mangle]
pub unsafe extern "C" fn kb_session_sample(
    session: *mut KbSession,
    sampler: *mut KbSampler,
    out: *mut u8,
) -> KbStatus {
    let (Some(s), Some(sampler), false) = (session.as_mut(), sampler.as_mut(), out.is_null())
    else {
        return KB_ERR_NULL;
    };
    let b = sampler.0.sample(s.0.logits());
    *out = b;
    match s.0.push(b) {
        Ok(()) => KB_OK,
        Err(e) => status(e),
    }
}

/// Creates a BiGS encoder for inputs of up to `max_len` bytes.
///
/// # Safety
/// `model` is null or a live model from [`kb_model_load`]; `arena` is null
/// or holds `arena_len` writable bytes and `storage` `storage_len`, neither
/// read nor written by anything else while the encoder lives; the model
/// (and its bytes) and the arena outlive the encoder; `out` is null or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn kb_encoder_new(
    storage: *mut u8,
    storage_len: usize,
    model: *const KbModel,
    arena: *mut u8,
    arena_len: usize,
    max_len: usize,
    out: *mut *mut KbEncoder,
) -> KbStatus {
    let (Some(model), false) = (model.as_ref(), out.is_null()) else {
        return KB_ERR_NULL;
    };
    let KbModel::Bigs(b) = model else {
        return KB_ERR_FAMILY;
    };
    let arena = try_status!(slice_mut(arena, arena_len));
    let enc = match b.encoder(arena, max_len) {
        Ok(e) => e,
        Err(e) => return status(e),
    };
    *out = try_status!(place(storage, storage_len, KbEncoder(enc)));
    KB_OK
}

/// Classifies `len` bytes of text: the class index into `label`, and the
/// first `probs_len` class probabilities into `probs` (may be null when 0).
/// An encoder made for T_max bytes reads a longer text in windows
/// (`Encoder::class_logits`); a smaller one refuses texts past its size.
///
/// # Safety
/// `encoder` is null or a live encoder from [`kb_encoder_new`], not in use
/// by another call at the same time; `text` is null or holds `len` readable
/// bytes; `probs` is null or holds `probs_len` writable floats; `label` is
/// null or writable.
#[no_mangle]
pub unsafe extern "C" fn kb_classify(
    encoder: *mut KbEncoder,
    text: *const u8,
    len: usize,
    label: *mut usize,
    probs: *mut f32,
    probs_len: usize,
) -> KbStatus {
    let (Some(e), false) = (encoder.as_mut(), label.is_null()) else {
        return KB_ERR_NULL;
    };
    let text = try_status!(slice(text, len));
    let probs = try_status!(slice_mut(probs, probs_len));
    match e.0.classify(text) {
        Ok(c) => {
            *label = c.class;
            for (o, p) in probs.iter_mut().zip(c.probs) {
                *o = *p;
            }
            KB_OK
        }
        Err(err) => status(err),
    }
}

/// The name of class `index` (not NUL-terminated: `*name_len` bytes).
///
/// # Safety
/// `model` is null or a live model from [`kb_model_load`]; `name` and
/// `name_len` are null or writable. The name points into the model's bytes,
/// valid as long as they are.
#[no_mangle]
pub unsafe extern "C" fn kb_label_name(
    model: *const KbModel,
    index: usize,
    name: *mut *const u8,
    name_len: *mut usize,
) -> KbStatus {
    let (Some(model), false, false) = (model.as_ref(), name.is_null(), name_len.is_null()) else {
        return KB_ERR_NULL;
    };
    let KbModel::Bigs(b) = model else {
        return KB_ERR_FAMILY;
    };
    match b.label(index) {
        Some(s) if index < b.config.n_classes as usize => {
            *name = s.as_ptr();
            *name_len = s.len();
            KB_OK
        }
        _ => KB_ERR_INPUT,
    }
}

/// Fills the gaps of `text`: `out[i]` is `text[i]`, or the most likely byte
/// where `gaps[i]` is non-zero. All three hold `len` bytes.
///
/// # Safety
/// `encoder` is null or a live encoder from [`kb_encoder_new`], not in use
/// by another call at the same time; `text` and `gaps` are null or hold
/// `len` readable bytes, `out` is null or holds `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn kb_fill(
    encoder: *mut KbEncoder,
    text: *const u8,
    gaps: *const u8,
    len: usize,
    out: *mut u8,
) -> KbStatus {
    let Some(e) = encoder.as_mut() else {
        return KB_ERR_NULL;
    };
    let text = try_status!(slice(text, len));
    let gap_bytes = try_status!(slice(gaps, len));
    let out = try_status!(slice_mut(out, len));
    // The runtime takes a bool per byte; the encoder's max_len bounds the
    // stack copy (T_max of every preset is at most 1024 bytes).
    const MAX: usize = 1024;
    if len > MAX {
        return KB_ERR_INPUT;
    }
    let mut flags = [false; MAX];
    for (f, &g) in flags.iter_mut().zip(gap_bytes) {
        *f = g != 0;
    }
    match e.0.fill(text, &flags[..len], out) {
        Ok(()) => KB_OK,
        Err(err) => status(err),
    }
}

/// A standalone no_std staticlib needs a panic handler. The runtime has no panic
/// reachable from input (every entry point returns a status), so reaching
/// this is a bug: stop rather than unwind into C.
#[cfg(all(feature = "capi-staticlib", not(feature = "std"), not(test)))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// The precompiled `core` of hosted targets carries unwind tables that name
/// this symbol even when everything is built with `panic = "abort"`, so a
/// no_std staticlib for such a target must define it; it is never called.
#[cfg(all(
    feature = "capi-staticlib",
    not(feature = "std"),
    not(test),
    not(target_os = "none")
))]
#[no_mangle]
extern "C" fn rust_eh_personality() {}

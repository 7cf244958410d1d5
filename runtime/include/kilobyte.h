/* kilobyte: C API of the no_std runtime (Rust crate kilobyte-runtime,
 * feature `capi`). Build the static library with
 *   CARGO_PROFILE_RELEASE_PANIC=abort cargo rustc -p kilobyte-runtime \
 *       --release --features capi-staticlib --crate-type staticlib
 * and link libkilobyte_runtime.a (plus -lm on hosted targets).
 *
 * Nothing allocates. The caller provides:
 *   - the model bytes, 64-byte aligned, alive and unchanged while in use;
 *   - storage for each object (kb_model_size() etc. bytes, 16-byte aligned);
 *   - the arena (kb_arena_bytes() bytes) for a session or an encoder.
 * Every function returns a kb_status; kb_status_message() describes it.
 */
#ifndef KILOBYTE_H
#define KILOBYTE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef int32_t kb_status;
enum {
    KB_OK = 0,
    KB_ERR_NULL = 1,      /* a required pointer is null */
    KB_ERR_STORAGE = 2,   /* object storage too small or misaligned */
    KB_ERR_FORMAT = 3,    /* not a valid .kbm (or bytes not 64-byte aligned) */
    KB_ERR_FAMILY = 4,    /* operation needs the other model family */
    KB_ERR_ARENA = 5,     /* arena smaller than kb_arena_bytes() */
    KB_ERR_INPUT = 6,     /* input empty, too long, or out of range */
    KB_ERR_HEAD = 7,      /* the model lacks the head this needs */
    KB_ERR_INTERNAL = 8
};

typedef struct KbModel kb_model;     /* a MEGABYTE or BiGS model */
typedef struct KbSession kb_session; /* MEGABYTE generation state */
typedef struct KbEncoder kb_encoder; /* BiGS encoder state */
typedef struct KbSampler kb_sampler; /* sampling settings and random state */

#define KB_FAMILY_MEGABYTE 1
#define KB_FAMILY_BIGS 2

size_t kb_model_size(void);
size_t kb_session_size(void);
size_t kb_encoder_size(void);
size_t kb_sampler_size(void);
/* on != 0: SIMD kernels where built and supported; 0: the scalar reference
 * kernels (the same bytes on every target). Returns 1 if SIMD is in use. */
int32_t kb_set_simd(int32_t on);
const char *kb_status_message(kb_status code);

kb_status kb_model_load(void *storage, size_t storage_len, const uint8_t *data,
                        size_t len, kb_model **out);
int32_t kb_model_family(const kb_model *model);
/* MEGABYTE's context T_max or BiGS's longest input, in bytes. */
size_t kb_model_max_len(const kb_model *model);
/* Arena bytes: MEGABYTE session with max_len bytes of context, or BiGS
 * encoder for inputs of up to max_len bytes. */
kb_status kb_arena_bytes(const kb_model *model, size_t max_len, size_t *out);

/* MEGABYTE */
kb_status kb_session_new(void *storage, size_t storage_len, const kb_model *model,
                         uint8_t *arena, size_t arena_len, size_t max_context,
                         kb_session **out);
kb_status kb_session_prompt(kb_session *session, const uint8_t *bytes, size_t len);
kb_status kb_session_push(kb_session *session, uint8_t byte);
/* Greedy next byte: written to *out and appended to the context. */
kb_status kb_session_next(kb_session *session, uint8_t *out);
/* temperature 0: greedy; top_k 0: all bytes; top_p 1: off. A seed gives the
 * bytes `kilobyte generate --seed` gives. */
kb_status kb_sampler_new(void *storage, size_t storage_len, float temperature,
                         size_t top_k, float top_p, uint64_t seed, kb_sampler **out);
/* Next byte drawn by the sampler: written to *out and appended. */
kb_status kb_session_sample(kb_session *session, kb_sampler *sampler, uint8_t *out);

/* BiGS */
kb_status kb_encoder_new(void *storage, size_t storage_len, const kb_model *model,
                         uint8_t *arena, size_t arena_len, size_t max_len,
                         kb_encoder **out);
/* Class of `len` bytes of text. An encoder made for T_max bytes reads a
   longer text whole, in windows of T_max bytes; a smaller one refuses
   texts longer than its max_len. */
kb_status kb_classify(kb_encoder *encoder, const uint8_t *text, size_t len,
                      size_t *label, float *probs, size_t probs_len);
/* Label name of class `index`: *name_len bytes at *name, not NUL-terminated. */
kb_status kb_label_name(const kb_model *model, size_t index, const uint8_t **name,
                        size_t *name_len);
/* out[i] = text[i], or the most likely byte where gaps[i] != 0. */
kb_status kb_fill(kb_encoder *encoder, const uint8_t *text, const uint8_t *gaps,
                  size_t len, uint8_t *out);

#ifdef __cplusplus
}
#endif
#endif /* KILOBYTE_H */

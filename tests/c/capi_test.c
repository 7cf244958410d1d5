/* Runs a .kbm through the C API, printing what the `kilobyte` CLI prints for
 * the same input, so tests/c/run.sh can compare them:
 *   capi_test MEGABYTE.kbm generate PROMPT N   -> N greedy bytes after PROMPT
 *   capi_test BIGS.kbm classify TEXT...        -> "label\tprob" per text
 *   capi_test BIGS.kbm fill TEXT               -> TEXT with '_' filled
 * Uses only static buffers and one aligned read of the model file. */
#include "kilobyte.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Alignas(64) uint8_t model_bytes[16 << 20];
static _Alignas(16) uint8_t model_storage[32768];
static _Alignas(16) uint8_t object_storage[4096];
static _Alignas(64) uint8_t arena[32 << 20];

static int check(kb_status s, const char *what) {
    if (s != KB_OK) {
        fprintf(stderr, "capi_test: %s: %s\n", what, kb_status_message(s));
        exit(1);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: capi_test MODEL.kbm generate|classify|fill ARGS...\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    size_t len = fread(model_bytes, 1, sizeof model_bytes, f);
    fclose(f);
    if (kb_model_size() > sizeof model_storage || kb_session_size() > sizeof object_storage ||
        kb_encoder_size() > sizeof object_storage) {
        fprintf(stderr, "capi_test: storage buffers too small\n");
        return 1;
    }
    kb_model *model;
    check(kb_model_load(model_storage, sizeof model_storage, model_bytes, len, &model), "load");
    /* A wrong call gets a status, not a crash. */
    if (kb_model_load(model_storage, sizeof model_storage, model_bytes + 1, len - 1, &model) !=
        KB_ERR_FORMAT) {
        fprintf(stderr, "capi_test: a misaligned model was accepted\n");
        return 1;
    }
    check(kb_model_load(model_storage, sizeof model_storage, model_bytes, len, &model), "reload");

    if (strcmp(argv[2], "generate") == 0 && argc == 5) {
        size_t need, context = 64;
        check(kb_arena_bytes(model, context, &need), "arena size");
        if (kb_session_new(object_storage, sizeof object_storage, model, arena, need - 1, context,
                           &(kb_session *){0}) != KB_ERR_ARENA) {
            fprintf(stderr, "capi_test: a small arena was accepted\n");
            return 1;
        }
        kb_session *s;
        check(kb_session_new(object_storage, sizeof object_storage, model, arena, need, context, &s),
              "session");
        const char *prompt = argv[3];
        check(kb_session_prompt(s, (const uint8_t *)prompt, strlen(prompt)), "prompt");
        for (int i = 0; i < atoi(argv[4]); i++) {
            uint8_t b;
            check(kb_session_next(s, &b), "next");
            putchar(b);
        }
        return 0;
    }
    size_t need;
    check(kb_arena_bytes(model, 128, &need), "arena size");
    kb_encoder *e;
    check(kb_encoder_new(object_storage, sizeof object_storage, model, arena, need, 128, &e),
          "encoder");
    if (strcmp(argv[2], "classify") == 0) {
        for (int i = 3; i < argc; i++) {
            size_t label;
            float probs[16];
            check(kb_classify(e, (const uint8_t *)argv[i], strlen(argv[i]), &label, probs, 16),
                  "classify");
            const uint8_t *name;
            size_t name_len;
            check(kb_label_name(model, label, &name, &name_len), "label");
            printf("%.*s\t%.4f\n", (int)name_len, (const char *)name, probs[label]);
        }
        return 0;
    }
    if (strcmp(argv[2], "fill") == 0) {
        const char *text = argv[3];
        size_t n = strlen(text);
        uint8_t gaps[128], out[128];
        if (n > sizeof gaps) return 2;
        for (size_t i = 0; i < n; i++) gaps[i] = text[i] == '_';
        check(kb_fill(e, (const uint8_t *)text, gaps, n, out), "fill");
        fwrite(out, 1, n, stdout);
        putchar('\n');
        return 0;
    }
    fprintf(stderr, "capi_test: unknown command %s\n", argv[2]);
    return 2;
}

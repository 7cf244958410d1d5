#!/usr/bin/env python3
"""Random-weight Llama models for the peers benchmark (trainer/bench/peers.sh).

Owns: choosing a Llama shape with a given parameter count and a 256-entry
(byte) vocabulary, and writing it as llama2.c's f32 file (run.c), its Q8_0
file (runq.c, version 2) with a byte tokenizer, and f32 GGUF (llama.cpp,
through the `gguf` package). Quantised GGUF is made by llama.cpp's own
llama-quantize, not here. Must not touch kilobyte's formats: this only
serves the peers.

    peer_models.py shape PARAMS            -> prints "dim hidden layers heads"
    peer_models.py write PARAMS OUTDIR     -> OUTDIR/{model.bin, modelq.bin,
                                              tok.bin, model-f32.gguf, shape.json}

Speed does not depend on the values, only on the shapes, so the weights are
uniform noise from a fixed seed. Token 1 is llama2.c's BOS, which stops its
generation loop: its embedding row (the tied classifier's row) is zero, so
greedy decoding never picks it and every run generates the bytes asked for.
"""
import json
import os
import struct
import sys

import numpy as np

VOCAB = 256
SEQ = 1024
HEAD = 64
GROUP = 64  # runq.c's default Q8_0 group


def count(dim, hidden, layers):
    """Parameters, with the classifier tied to the embedding (as both
    kilobyte and llama2.c's small models do)."""
    per_layer = 4 * dim * dim + 3 * dim * hidden + 2 * dim
    return VOCAB * dim + layers * per_layer + dim


def shape(params):
    """A Llama shape of `params` parameters (within 3%), as wide as it can
    be: the fewest layers (at least 2), dims in multiples of 64 (heads of 64,
    runq's groups of 64) and a hidden size between 2 and 4 times the width in
    multiples of 64 (Llama's own rule, 8/3, is in that range). Wide matrices
    are a Llama engine's best case, so the peer is not handicapped by a
    shape it would never be run at."""
    for layers in range(2, 65):
        best = None
        for dim in range(64, 8193, 64):
            for hidden in range(2 * dim, 4 * dim + 1, 64):
                err = abs(count(dim, hidden, layers) - params) / params
                if err <= 0.03 and (best is None or err < best[0]):
                    best = (err, dim, hidden)
        if best:
            _, dim, hidden = best
            return dim, hidden, layers, dim // HEAD
    raise SystemExit(f"peer_models.py: no Llama shape within 3% of {params} parameters")


def tensors(dim, hidden, layers, seed=0):
    rng = np.random.default_rng(seed)

    def w(*s):
        scale = np.float32(2.0 / np.sqrt(s[-1]))
        return ((rng.random(s, dtype=np.float32) - np.float32(0.5)) * scale).astype(np.float32)

    emb = w(VOCAB, dim)
    emb[1] = 0.0
    t = {"emb": emb, "norm": np.ones(dim, np.float32)}
    for i in range(layers):
        t[f"attn_norm.{i}"] = np.ones(dim, np.float32)
        t[f"ffn_norm.{i}"] = np.ones(dim, np.float32)
        for name, s in (("wq", (dim, dim)), ("wk", (dim, dim)), ("wv", (dim, dim)),
                        ("wo", (dim, dim)), ("w1", (hidden, dim)),
                        ("w2", (dim, hidden)), ("w3", (hidden, dim))):
            t[f"{name}.{i}"] = w(*s)
    return t


def write_llama2c(t, dim, hidden, layers, heads, path):
    """run.c's legacy (v0) file: header, then tensors grouped by kind."""
    with open(path, "wb") as f:
        f.write(struct.pack("7i", dim, hidden, layers, heads, heads, VOCAB, SEQ))
        f.write(t["emb"].tobytes())
        for kind in ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3"):
            for i in range(layers):
                f.write(t[f"{kind}.{i}"].tobytes())
        f.write(t["norm"].tobytes())
        # freq_cis_real and _imag: unused by run.c (it computes RoPE), but
        # part of the layout it skips over.
        f.write(np.zeros(SEQ * (dim // heads) // 2 * 2, np.float32).tobytes())


def q80(x):
    """runq.c's Q8_0: int8 in groups of GROUP with one f32 scale each."""
    g = x.reshape(-1, GROUP)
    scale = np.abs(g).max(axis=1) / 127.0
    safe = np.where(scale == 0, 1.0, scale)
    q = np.round(g / safe[:, None]).astype(np.int8)
    return q.tobytes() + scale.astype(np.float32).tobytes()


def write_llama2c_q8(t, dim, hidden, layers, heads, path):
    """runq.c's version-2 file: 256-byte header, f32 norms, Q8_0 matrices."""
    with open(path, "wb") as f:
        head = struct.pack("Ii", 0x616B3432, 2)
        head += struct.pack("7i", dim, hidden, layers, heads, heads, VOCAB, SEQ)
        head += struct.pack("B", 1) + struct.pack("i", GROUP)
        f.write(head + b"\0" * (256 - len(head)))
        for kind in ("attn_norm", "ffn_norm"):
            for i in range(layers):
                f.write(t[f"{kind}.{i}"].tobytes())
        f.write(t["norm"].tobytes())
        f.write(q80(t["emb"]))
        for kind in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"):
            for i in range(layers):
                f.write(q80(t[f"{kind}.{i}"]))


def write_tokenizer(path):
    """run.c's tokenizer.bin: one piece per byte (as <0xNN>, which its
    decoder turns back into the raw byte)."""
    with open(path, "wb") as f:
        f.write(struct.pack("i", 6))
        for b in range(VOCAB):
            piece = f"<0x{b:02X}>".encode()
            f.write(struct.pack("fi", 0.0, len(piece)) + piece)


def write_gguf(t, dim, hidden, layers, heads, path):
    import gguf

    w = gguf.GGUFWriter(path, "llama")
    w.add_name("kilobyte-peer")
    w.add_context_length(SEQ)
    w.add_embedding_length(dim)
    w.add_block_count(layers)
    w.add_feed_forward_length(hidden)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_dimension_count(dim // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<0x{b:02X}>".encode() for b in range(VOCAB)])
    w.add_token_scores([0.0] * VOCAB)
    w.add_token_types([gguf.TokenType.BYTE] * VOCAB)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_tensor("token_embd.weight", t["emb"])
    w.add_tensor("output_norm.weight", t["norm"])
    names = {"wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output",
             "w1": "ffn_gate", "w2": "ffn_down", "w3": "ffn_up"}
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", t[f"attn_norm.{i}"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", t[f"ffn_norm.{i}"])
        for ours, theirs in names.items():
            w.add_tensor(f"blk.{i}.{theirs}.weight", t[f"{ours}.{i}"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "shape":
        print(*shape(int(sys.argv[2])))
    elif len(sys.argv) == 4 and sys.argv[1] == "write":
        params, out = int(sys.argv[2]), sys.argv[3]
        dim, hidden, layers, heads = shape(params)
        os.makedirs(out, exist_ok=True)
        t = tensors(dim, hidden, layers)
        write_llama2c(t, dim, hidden, layers, heads, os.path.join(out, "model.bin"))
        write_llama2c_q8(t, dim, hidden, layers, heads, os.path.join(out, "modelq.bin"))
        write_tokenizer(os.path.join(out, "tok.bin"))
        write_gguf(t, dim, hidden, layers, heads, os.path.join(out, "model-f32.gguf"))
        with open(os.path.join(out, "shape.json"), "w") as f:
            json.dump({"dim": dim, "hidden": hidden, "layers": layers, "heads": heads,
                       "params": count(dim, hidden, layers), "target": params}, f)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

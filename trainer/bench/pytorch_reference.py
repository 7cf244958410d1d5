"""Times the reference PyTorch MEGABYTE (lucidrains' megabyte-pytorch) on the
4M-parameter config the kilobyte issues quote, for side-by-side comparison
with `kilobyte bench train --presets ref4m` and `kilobyte bench runtime
--presets ref4m` (see README, Figures). Needs: pip install torch megabyte-pytorch

usage: python3 trainer/bench/pytorch_reference.py [--train-steps 3] [--gen-bytes 32] [--bf16]

--bf16 also times training under CPU autocast to bfloat16 (oneDNN's AMX or
AVX-512 BF16 matrix products where the CPU has them): PyTorch's fastest CPU
path, though not f32 arithmetic like kilobyte's trainer.
"""
import argparse
import time

import torch
from MEGABYTE_pytorch import MEGABYTE


def model():
    # dims (256, 128), depths (4, 2), lengths (256, 4): 256 patches of 4 bytes.
    return MEGABYTE(num_tokens=256, dim=(256, 128), depth=(4, 2), max_seq_len=(256, 4))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--gen-bytes", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=256, help="prompt bytes before timing generation")
    ap.add_argument("--bf16", action="store_true", help="also time training under bf16 autocast")
    args = ap.parse_args()
    torch.manual_seed(0)

    torch.set_num_threads(2)
    m = model()
    n_params = sum(p.numel() for p in m.parameters())
    for dtype in [torch.float32] + ([torch.bfloat16] if args.bf16 else []):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        x = torch.randint(0, 256, (8, 1024))
        on = dtype != torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=on):
            loss = m(x, return_loss=True)  # warm-up
        loss.backward()
        opt.step()
        t = time.perf_counter()
        for _ in range(args.train_steps):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=on):
                loss = m(x, return_loss=True)
            loss.backward()
            opt.step()
        secs = (time.perf_counter() - t) / args.train_steps
        name = "bf16 autocast" if on else "f32"
        print(f"pytorch megabyte {n_params} params, {name}: train batch 8 x 1024, 2 threads: {8 * 1024 / secs:.0f} bytes/s")

    # generate() recomputes the whole prefix for every byte; time its loop
    # (greedy) over a fixed number of bytes after a prompt, on one thread.
    torch.set_num_threads(1)
    m.eval()
    seq = torch.randint(0, 256, (1, args.prompt))
    with torch.no_grad():
        t = time.perf_counter()
        for _ in range(args.gen_bytes):
            logits = m(seq)[:, -1]
            seq = torch.cat((seq, logits.argmax(-1, keepdim=True)), dim=-1)
        secs = time.perf_counter() - t
    print(f"pytorch megabyte generate after a {args.prompt}-byte prompt, 1 thread: {args.gen_bytes / secs:.1f} bytes/s")


if __name__ == "__main__":
    main()

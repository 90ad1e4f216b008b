"""Can fewer multiplications (Winograd) bring float32 yolov3-tiny under 0.7x OpenCV DNN here?

Times, for the heavy 3x3 stride-1 convolutions of yolov3-tiny at 416 (batch 1, float32, torch
threads = --threads), oneDNN's direct convolution (channels_last, what detkit runs) against a
Winograd F(2,3) and F(4,3) convolution written with PyTorch ops (input transform, batched GEMM,
output transform), and the batched GEMM alone (the part Winograd cannot avoid). Prints a markdown
table; results and the conclusion are in docs/benchmarks_inference.md.

    .venv/bin/python tools/bench_winograd.py [--threads 2] [--iters 15]

An experiment backing a documented conclusion, not a detkit feature: nothing in detkit uses it.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

# (in channels, out channels, feature size) of yolov3-tiny's 3x3 stride-1 convs at 416x416
LAYERS = {12: (512, 1024, 13), 21: (384, 256, 26), 10: (256, 512, 13), 8: (128, 256, 26), 6: (64, 128, 52)}


def winograd_matrices(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B^T, G, A^T of Winograd F(m, 3) (Lavin & Gray 2015), float64."""
    if m == 2:
        bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        g = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]
        at = [[1, 1, 1, 0], [0, 1, -1, -1]]
    elif m == 4:
        bt = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
              [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
        g = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
             [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
        at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    else:
        raise ValueError("m must be 2 or 4")
    return tuple(torch.tensor(v, dtype=torch.float64) for v in (bt, g, at))  # type: ignore[return-value]


class Winograd:
    """3x3, stride 1, padding 1 convolution as Winograd F(m, 3) (weights transformed once)."""

    def __init__(self, weight: torch.Tensor, m: int):
        bt, g, at = winograd_matrices(m)
        self.m, self.a = m, m + 2
        u = torch.einsum("ij,kcjl,ml->imkc", g, weight.double(), g)  # (a, a, K, C)
        self.u = u.reshape(self.a * self.a, weight.shape[0], weight.shape[1]).transpose(1, 2).contiguous().float()
        self.bt, self.at = bt.float(), at.float()

    def tiles(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        th, tw = -(-h // self.m), -(-w // self.m)
        xp = F.pad(x, (1, 1 + tw * self.m - w, 1, 1 + th * self.m - h))
        t = xp.unfold(2, self.a, self.m).unfold(3, self.a, self.m)  # (N, C, th, tw, a, a)
        return torch.einsum("ij,nctwjk,lk->ilntwc", self.bt, t, self.bt).reshape(self.a * self.a, n * th * tw, c)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        th, tw = -(-h // self.m), -(-w // self.m)
        mm = torch.bmm(self.tiles(x), self.u).reshape(self.a, self.a, n, th, tw, -1)
        y = torch.einsum("ij,jlntwk,ml->nktiwm", self.at, mm, self.at).reshape(n, -1, th * self.m, tw * self.m)
        return y[:, :, :h, :w]


def median_ms(fn, iters: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, batch 1, float32, median of {args.iters} calls\n")
    print("| layer | C -> K @ HxW | direct (oneDNN, channels_last) ms | F(2,3) ms | F(2,3) GEMM only ms "
          "| F(4,3) ms | F(4,3) GEMM only ms | max rel. error F(4,3) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    with torch.inference_mode():
        for idx, (c, k, hw) in LAYERS.items():
            conv = torch.nn.Conv2d(c, k, 3, padding=1, bias=False)
            x = torch.randn(1, c, hw, hw)
            ref = conv(x)
            conv_cl, x_cl = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
            row = [median_ms(lambda: conv_cl(x_cl), args.iters)]
            err = 0.0
            for m in (2, 4):
                wg = Winograd(conv.weight, m)
                v = wg.tiles(x)
                row += [median_ms(lambda: wg(x), args.iters), median_ms(lambda: torch.bmm(v, wg.u), args.iters)]
                err = float((wg(x) - ref).abs().max() / ref.abs().max())
            print(f"| {idx} | {c} -> {k} @ {hw}x{hw} | " + " | ".join(f"{v:.2f}" for v in row) + f" | {err:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Which attention kernel should CUDA use, laid out how?

For every SD v1.5 attention shape (fp16, 512x512, batch 2), each candidate is built for the
GPU, checked against PyTorch's SDPA on the same inputs and timed next to it (round-robin,
median): wsd.kernels.attention's scalar flash kernel in WebGPU's portable layout and in CUDA's
(wsd.kernels.attention.GPU_LAYOUTS), and the tensor-core kernel (wsd.kernels.attention_wmma) in each block
layout it offers. A candidate is eligible only if it is correct on every shape it covers; the
table says how much faster it is than the portable layout (the first row per shape).

    python scripts/cuda_attention_layouts.py [--markdown FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import tvm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsd import bench  # noqa: E402
from wsd.kernels import attention, attention_wmma

SHAPES = {name: attention.SD15_SHAPES[name] for name in (
    "unet64-self", "unet64-cross", "unet32-self", "unet16-self", "vae-mid")}


def _scalar(layout: attention.GPULayout):
    return lambda shape: attention.attention_func(
        shape, attention.choose_config(shape, True, layout))


def _wmma(cfg: attention_wmma.Config):
    def build(shape):
        if attention_wmma.choose_config(shape) is None \
                or attention_wmma.shared_bytes(shape, cfg) > attention_wmma.MAX_SHARED:
            raise ValueError("does not apply")
        return attention_wmma.attention_func(shape, cfg)
    return build


# Block layouts measured besides attention_wmma.CANDIDATES (kept there only if they win).
TRIED = (attention_wmma.Config(4, 32), attention_wmma.Config(8, 32))

# label -> shape -> PrimFunc (ValueError where the candidate does not apply)
CANDIDATES = {
    "scalar, portable (16x16 threads, 2x2 scores, 16 KiB)": _scalar(attention.GPULayout()),
    "scalar, CUDA layout (8x16 threads, 4x4 scores, 48 KiB)":
        _scalar(attention.GPU_LAYOUTS["cuda"]),
    **{f"wmma, {cfg.warps} warps x {cfg.keys} keys": _wmma(cfg)
       for cfg in (*attention_wmma.CANDIDATES, *TRIED)},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--markdown")
    args = p.parse_args()
    device = bench.Device("cuda")
    target = device.tvm_target
    rows, failed, skipped = [], set(), set()
    totals = dict.fromkeys(CANDIDATES, 0.0)  # ms, summed over the shapes
    for name, (b, sq, skv, h, d) in SHAPES.items():
        shape = attention.Shape(b, sq, skv, h, d, d, "float16", attention.default_scale(d))
        rng = np.random.default_rng(0)
        arrays = [(rng.standard_normal((b, n, h, d)) * s).astype("float16")
                  for n, s in ((sq, 2.0), (skv, 1.0), (skv, 1.0))]
        tensors = [torch.from_numpy(a).cuda().transpose(1, 2) for a in arrays]
        expected = torch.nn.functional.scaled_dot_product_attention(*tensors).transpose(1, 2)
        expected = expected.float().cpu().numpy()
        flops = 2 * b * h * sq * skv * (d + d)
        buffers = [tvm.runtime.tensor(a, device.tvm) for a in arrays]
        out = tvm.runtime.empty((b, sq, h, d), "float16", device.tvm)
        fns, errors = {}, {}
        for kernel, make in CANDIDATES.items():
            try:
                func = make(shape).with_attr("global_symbol", "main")
            except ValueError as err:
                rows.append([name, kernel, "-", "-", "-", str(err)[:40]])
                skipped.add(kernel)
                continue
            lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
            out.copyfrom(np.full(out.shape, np.nan, "float16"))  # a kernel must write it all
            lib["main"](*buffers, out)
            device.sync()
            errors[kernel] = bench.rel_l2(out.numpy().astype(np.float32), expected)
            fns[kernel] = (lambda f=lib["main"]: f(*buffers, out))
        fns["torch"] = lambda: torch.nn.functional.scaled_dot_product_attention(*tensors)
        times = bench.measure_interleaved(fns, device, warmup=2, repeat=20)
        base = times[next(iter(CANDIDATES))].ms
        for kernel in CANDIDATES:
            if kernel not in errors:
                continue
            ms = times[kernel].ms
            totals[kernel] += ms
            ok = errors[kernel] < 5e-3  # NaN (an unwritten output) fails too
            if not ok:
                failed.add(kernel)
            rows.append([name, kernel, f"{ms:.3f}", f"{flops / ms / 1e9:.1f}",
                         f"{base / ms:.2f}", f"err {errors[kernel]:.1e}" + ("" if ok else " FAIL")])
        torch_ms = times["torch"].ms
        rows.append([name, "torch SDPA", f"{torch_ms:.3f}", f"{flops / torch_ms / 1e9:.1f}",
                     f"{base / torch_ms:.2f}", ""])
    header = ["shape", "kernel", "ms", "TFLOP/s", "speed-up", "check"]
    print(bench.format_table(header, rows))
    print("\nsum over the shapes (ms):")
    for kernel, ms in sorted(totals.items(), key=lambda kv: kv[1]):
        flags = ("  (fails a check)" if kernel in failed else "") + (
            "  (not every shape)" if kernel in skipped else "")
        print(f"  {ms:8.3f}  {kernel}{flags}")
    if args.markdown:
        Path(args.markdown).write_text(bench.format_table(header, rows, markdown=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

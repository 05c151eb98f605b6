"""Which workgroup layout should our attention kernel (wsd.attention) use on CUDA?

For every SD v1.5 attention shape (fp16, 512x512, batch 2), each candidate layout (threads x
scores per thread, up to 48 KiB of shared memory) is built for the GPU, checked against
PyTorch's SDPA on the same inputs and timed next to it (round-robin, median). A layout is a
candidate for wsd.attention.GPU_LAYOUTS["cuda"] only if it is correct on every shape; the
table says how much faster it is than WebGPU's portable layout (the first row per shape).

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

from wsd import attention, bench  # noqa: E402

SHAPES = {  # (batch, q_len, kv_len, heads, head_dim), as tests/numerics/test_attention.SD15
    "unet64-self": (2, 4096, 4096, 8, 40),
    "unet64-cross": (2, 4096, 77, 8, 40),
    "unet32-self": (2, 1024, 1024, 8, 80),
    "unet16-self": (2, 256, 256, 8, 160),
    "vae-mid": (1, 4096, 4096, 1, 512),
}
CUDA_SHARED = 48 * 1024
LAYOUTS = [attention.GPULayout()] + [
    attention.GPULayout(ty, tx, ry, rx, CUDA_SHARED)
    for ty, tx, ry, rx in [(16, 16, 2, 2), (16, 16, 4, 2), (16, 16, 2, 4), (16, 16, 4, 4),
                           (8, 16, 4, 4), (16, 8, 4, 4), (32, 8, 2, 4)]]


def label(layout: attention.GPULayout) -> str:
    return (f"{layout.ty}x{layout.tx} threads, {layout.ry}x{layout.rx} scores, "
            f"{layout.max_bytes // 1024} KiB")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--markdown")
    args = p.parse_args()
    device = bench.Device("cuda")
    target = device.tvm_target
    rows, failed, skipped = [], set(), set()
    totals = dict.fromkeys(LAYOUTS, 0.0)  # ms, summed over the shapes
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
        for layout in LAYOUTS:
            try:
                cfg = attention.choose_config(shape, True, layout)
            except ValueError as err:
                rows.append([name, label(layout), "-", "-", "-", str(err)[:40]])
                skipped.add(layout)
                continue
            func = attention.attention_func(shape, cfg).with_attr("global_symbol", "main")
            lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
            lib["main"](*buffers, out)
            device.sync()
            errors[layout] = bench.rel_l2(out.numpy().astype(np.float32), expected)
            fns[layout] = (lambda f=lib["main"]: f(*buffers, out))
        fns["torch"] = lambda: torch.nn.functional.scaled_dot_product_attention(*tensors)
        times = bench.measure_interleaved(fns, device, warmup=2, repeat=20)
        base = times[LAYOUTS[0]].ms
        for layout in LAYOUTS:
            if layout not in errors:
                continue
            ms = times[layout].ms
            totals[layout] += ms
            ok = errors[layout] < 5e-3
            if not ok:
                failed.add(layout)
            rows.append([name, label(layout), f"{ms:.3f}", f"{flops / ms / 1e9:.1f}",
                         f"{base / ms:.2f}", f"err {errors[layout]:.1e}" + ("" if ok else " FAIL")])
        torch_ms = times["torch"].ms
        rows.append([name, "torch SDPA", f"{torch_ms:.3f}", f"{flops / torch_ms / 1e9:.1f}",
                     f"{base / torch_ms:.2f}", ""])
    header = ["shape", "layout", "ms", "TFLOP/s", "speed-up", "check"]
    print(bench.format_table(header, rows))
    print("\nsum over the shapes (ms):")
    for layout, ms in sorted(totals.items(), key=lambda kv: kv[1]):
        flags = ("  (fails a check)" if layout in failed else "") + (
            "  (does not fit every shape)" if layout in skipped else "")
        print(f"  {ms:8.3f}  {label(layout)}{flags}")
    if args.markdown:
        Path(args.markdown).write_text(bench.format_table(header, rows, markdown=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

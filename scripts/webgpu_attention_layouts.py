"""Which layout should WebGPU's attention kernel use? A wsd.tuning.wgsl_bench folder to find out.

For every SD v1.5 attention shape (wsd.kernels.attention.SD15_SHAPES), in fp32 and fp16, the WGSL of
wsd.kernels.attention's flash kernel in WebGPU's portable layout (the variant labelled "default") and
in each candidate layout below that fits WebGPU's default 16 KiB of workgroup storage, and of
wsd.kernels.attention_rows' kernel in each of ROW_LAYOUTS that fits, with reference samples computed
in float64 by numpy from the bench's hash inputs. The GPU machine checks every variant against them and times it
(no TVM needed there):

    python scripts/webgpu_attention_layouts.py --out .tune/attn        # here, ~4 minutes
    bash scripts/device_wgsl_bench.sh .tune/attn --budget-ms 40 --rounds 2   # GPU machine

A layout goes into wsd.kernels.attention.WEBGPU_LAYOUTS only if it is correct on every shape and
faster than the portable one in the results (docs/PERF.md has the table).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsd.kernels import attention, attention_rows, attention_shape
from wsd.targets import tuning_target  # noqa: E402
from wsd.tuning import kernel_builds, tune, wgsl_bench  # noqa: E402


# (threads y, threads x, score rows, score columns per thread); each also with P V's loop
# over the key tile unrolled
LAYOUTS = [(16, 8, 2, 4), (8, 16, 4, 2), (8, 8, 4, 4), (16, 16, 4, 2), (16, 16, 2, 4),
           (8, 16, 4, 4), (16, 8, 4, 4), (32, 8, 2, 4), (8, 32, 4, 2), (8, 8, 8, 4),
           (8, 8, 4, 8)]


# wsd.kernels.attention_rows (one query row per invocation): rows per workgroup x keys per tile, for
# head dims up to ROWS_MAX_DIM (its registers grow with the head dim)
ROW_LAYOUTS = [(t, k) for t in (64, 128, 256) for k in (8, 16, 32, 48, 64)]
ROWS_MAX_DIM = 160


def label(layout: attention.GPULayout, cfg: attention.Config) -> str:
    return (f"attention:{layout.ty}x{layout.tx}/{layout.ry}x{layout.rx}"
            f"/dk{cfg.dk}/dv{cfg.dvk}" + ("/unroll" if cfg.unroll_keys else ""))


def reference(shape: attention.Shape, specs: list[dict]) -> dict:
    """The output at sampled indices, from float64 numpy on the bench's inputs."""
    q, k, v = (wgsl_bench.hash_inputs(s["shape"], s["dtype"], s["seed"]).astype(np.float64)
               for s in specs[:3])
    out = np.empty((shape.batch, shape.q_len, shape.heads, shape.v_dim))
    for b in range(shape.batch):
        for h in range(shape.heads):
            scores = q[b, :, h] @ k[b, :, h].T * shape.scale
            scores -= scores.max(axis=1, keepdims=True)
            p = np.exp(scores)
            out[b, :, h] = (p / p.sum(axis=1, keepdims=True)) @ v[b, :, h]
    return kernel_builds.sample_outputs(specs, [None, None, None, out])


def add_variant(out: Path, entry: dict, target, func, name: str, params: dict) -> None:
    """One variant of a kernel's entry: its WGSL written to the folder, its parameters."""
    entry["variants"].append({
        "label": name, "params": params, "rule": None,
        **tune.write_wgsl(out, f"{entry['key']}_{len(entry['variants'])}",
                          kernel_builds.compile_wgsl(func, target))})
    entry.setdefault("buffers", kernel_builds.buffer_specs(func))


def export(out: Path, dtypes: list[str], log=print) -> dict:
    target = tuning_target("webgpu")
    manifest = tune.new_bench_folder(out, "webgpu")
    for dtype in dtypes:
        for name, (b, sq, skv, h, d) in attention.SD15_SHAPES.items():
            start = time.time()
            shape = attention.Shape(b, sq, skv, h, d, d, dtype, attention.default_scale(d))
            key = f"attn-{name}-{dtype}"
            entry = {"key": key, "name": f"attention {name} {dtype}",
                     "flops": 2 * b * h * sq * skv * 2 * d, "calls": {},
                     "reference": f"refs/{key}.npz", "variants": []}
            seen = set()
            layouts = [attention.GPULayout()] + [attention.GPULayout(*t) for t in LAYOUTS]
            for layout in layouts + [dataclasses.replace(x, unroll_keys=True) for x in layouts]:
                if layout.ty * layout.tx > attention_shape.WEBGPU_MAX_INVOCATIONS:
                    continue
                try:
                    cfg = attention.choose_config(shape, True, layout)
                except ValueError:
                    continue  # does not fit the workgroup storage
                if cfg in seen:
                    continue
                seen.add(cfg)
                func = attention.attention_func(shape, cfg)
                add_variant(out, entry, target, func,
                            label(layout, cfg) if entry["variants"] else "default",
                            {"ty": cfg.ty, "tx": cfg.tx, "ry": cfg.ry, "rx": cfg.rx,
                             "dk": cfg.dk, "dvk": cfg.dvk, "unroll_keys": cfg.unroll_keys})
            for threads, keys in ROW_LAYOUTS if d <= ROWS_MAX_DIM else []:
                rows = attention.RowLayout(threads, keys)
                if attention_rows.fits(shape, rows):
                    continue
                add_variant(out, entry, target, attention_rows.attention_func(shape, rows),
                            f"rows:{threads}/k{keys}", {"rows": threads, "keys": keys})
            if not (out / entry["reference"]).is_file():
                np.savez_compressed(out / entry["reference"],
                                    **reference(shape, entry["buffers"]))
            manifest["kernels"].append(entry)
            log(f"{entry['name']}: {len(entry['variants'])} layouts "
                f"({time.time() - start:.1f} s)")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--dtype", default="float32,float16")
    args = p.parse_args()
    export(args.out, args.dtype.split(","))
    return 0


if __name__ == "__main__":
    sys.exit(main())

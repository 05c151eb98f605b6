"""Build the tiny Relax modules the web-runtime smoke test runs under node.

    python web/runtime/smoke_build.py OUT_DIR [--webgpu]

writes OUT_DIR/cpu.wasm (functions `add` and `matmul`, target webassembly) and, with
--webgpu, OUT_DIR/webgpu.wasm (the same functions as WGSL kernels, wasm host, plus
`matmul_split`: the matmul under wsd's tiled GEMM rule with split-K, two kernels and a
workspace between them, as SD v1.5's small-grid WebGPU records run), linked with
tvm.contrib.tvmjs.create_tvmjs_wasm against the runtime that build.sh put in
$WSD_WASM_RUNTIME (default ~/.cache/wsd/wasm-runtime/<tvm version>; build.sh prints it).
The shapes are fixed here and repeated in smoke.mjs: add on (N_ADD,), matmul (M,K)@(K,N).
"""

from __future__ import annotations

import argparse
import os
import sys

N_ADD = 1000
M, K, N = 16, 32, 8

WASM_HOST = {"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"}


def default_runtime_dir() -> str:
    import importlib.metadata as md

    return os.environ.get("WSD_WASM_RUNTIME") or os.path.expanduser(
        f"~/.cache/wsd/wasm-runtime/{md.version('apache-tvm')}"
    )


def make_module():
    from tvm.script import ir as I
    from tvm.script import relax as R

    @I.ir_module
    class Smoke:
        @R.function
        def add(x: R.Tensor((N_ADD,), "float32"), y: R.Tensor((N_ADD,), "float32")):
            return R.add(x, y)

        @R.function
        def matmul(a: R.Tensor((M, K), "float32"), b: R.Tensor((K, N), "float32")):
            return R.matmul(a, b)

    return Smoke


def add_split_k_matmul(mod):
    """`matmul_split`: (M,K) @ (K,N) scheduled by wsd.kernels.gemm.tiled_matmul with K in two
    parts, so tvmjs must allocate the kernel's workspace and run its two launches in order."""
    from tvm import relax, te

    from wsd.kernels.gemm import tiled_matmul

    a = te.placeholder((M, K), "float32", name="a")
    b = te.placeholder((K, N), "float32", name="b")
    k = te.reduce_axis((0, K), name="k")
    c = te.compute((M, N), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="matmul")
    config = tiled_matmul.Config(bm=16, bn=8, bk=8, tm=4, tn=2, tm_vec=4, tn_vec=2, split_k=2)
    sch = tiled_matmul.apply(te.create_prim_func([a, b, c]), config)
    bb = relax.BlockBuilder(mod)
    kernel = bb.add_func(sch.mod["main"].with_attr("tirx.is_scheduled", True),
                         "matmul_split_kernel")
    x = relax.Var("a", relax.TensorType((M, K), "float32"))
    y = relax.Var("b", relax.TensorType((K, N), "float32"))
    with bb.function("matmul_split", [x, y]):
        out = bb.emit(relax.call_tir(kernel, [x, y], relax.TensorType((M, N), "float32")))
        bb.emit_func_output(out)
    return bb.get()


def _fcompile(link_opt: str):
    from tvm.contrib import tvmjs

    def fcompile(output, objects, options=None, **kwargs):
        # create_tvmjs_wasm passes -O3 first; a later -O wins (-O3 makes this link ~2 min).
        opts = list(options or []) + [link_opt]
        return tvmjs.create_tvmjs_wasm(output, objects, options=opts, **kwargs)

    # Debian's emscripten (LLVM 14) cannot read TVM's LLVM-22 bitcode: hand it wasm objects.
    fcompile.object_format = "o"
    return fcompile


def build(out_dir: str, webgpu: bool = False, runtime_dir: str | None = None,
          link_opt: str = "-O1") -> dict[str, str]:
    import tvm

    runtime_dir = runtime_dir or default_runtime_dir()
    os.environ["TVM_HOME"] = runtime_dir  # create_tvmjs_wasm finds web/dist/wasm/*.bc here
    os.environ.setdefault("NODE_PATH", "/usr/share/nodejs")  # Debian's emcc needs it
    os.makedirs(out_dir, exist_ok=True)
    targets = {"cpu": tvm.target.Target(WASM_HOST)}
    if webgpu:
        targets["webgpu"] = tvm.target.Target({"kind": "webgpu"}, host=WASM_HOST)
    paths = {}
    for name, target in targets.items():
        mod = add_split_k_matmul(make_module()) if name == "webgpu" else make_module()
        ex = tvm.compile(mod, target=target)
        path = os.path.join(out_dir, f"{name}.wasm")
        ex.export_library(path, fcompile=_fcompile(link_opt))
        paths[name] = path
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--webgpu", action="store_true")
    ap.add_argument("--link-opt", default="-O1")
    args = ap.parse_args(argv)
    for name, path in build(args.out_dir, args.webgpu, link_opt=args.link_opt).items():
        print(name, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

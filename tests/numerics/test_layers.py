"""Per-layer numerics: every block of every model part, compiled alone, against fp32 PyTorch.

Each sweep (model, target, dtype) runs once per test session (module-scoped fixtures) and
prints its table (`pytest -s` shows it). CUDA sweeps are marked `gpu` and skipped where no
CUDA device is visible; the full-size SD v1.5 ones are also `slow` (run with --runslow).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tvm

from tests.cases import TINY_BLOCK_KINDS
from wsd.checks import verify
from wsd.models import load_model
from wsd.targets import make as make_target

HAS_CUDA = tvm.cuda(0).exist
_cuda = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")]

_full_size = [*_cuda, pytest.mark.slow]  # full-size SD v1.5: about 4 min a sweep on an H100

TARGETS = [pytest.param("llvm"), pytest.param("cuda", marks=_cuda)]

SWEEPS = [
    pytest.param(("tiny", "llvm", "float32"), id="tiny-llvm-float32"),
    pytest.param(("tiny", "llvm", "float16"), id="tiny-llvm-float16"),
    pytest.param(("tiny", "cuda", "float32"), id="tiny-cuda-float32", marks=_cuda),
    pytest.param(("tiny", "cuda", "float16"), id="tiny-cuda-float16", marks=_cuda),
    pytest.param(("sd15", "cuda", "float32"), id="sd15-cuda-float32", marks=_full_size),
    pytest.param(("sd15", "cuda", "float16"), id="sd15-cuda-float16", marks=_full_size),
]

_models: dict[str, object] = {}


def _model(name: str):
    if name not in _models:
        _models[name] = load_model(name)
    return _models[name]


@pytest.fixture(scope="module", params=SWEEPS)
def sweep(request):
    """(settings, rows) of one full sweep: every block of every part, at the model's size."""
    name, target, dtype = request.param
    rows = verify.verify_layers(_model(name), target=target, dtype=dtype, log=None)
    print(f"\n{name} {target} {dtype}\n{verify.format_report(rows)}")
    return request.param, rows


def test_every_block_passes_its_bar(sweep):
    (_, _, dtype), rows = sweep
    bar = verify.BARS[dtype]
    failed = [r for r in rows if not r.passed]
    assert not failed, verify.format_report(failed)
    assert all(r.psnr >= bar and r.error is None for r in rows)
    assert all(r.dtype == dtype for r in rows)


def test_block_list_covers_every_kind(sweep):
    (name, _, _), rows = sweep
    kinds = {(r.part, r.kind) for r in rows}
    assert TINY_BLOCK_KINDS <= kinds, sorted(TINY_BLOCK_KINDS - kinds)

    # Counted from the configs, so a block the walk misses shows up here.
    configs = _model(name).configs
    unet, vae, clip = configs["unet"], configs["vae"], configs["text_encoder"]
    blocks = {r.block for r in rows}

    def count(part, kind, prefix=""):
        return sum(r.part == part and r.kind == kind and r.block.startswith(prefix)
                   for r in rows)

    assert count("clip", "layer") == clip["num_hidden_layers"]
    assert {"embeddings", "final_layer_norm"} <= blocks
    assert count("unet", "down-block") == len(unet["down_block_types"])
    assert count("unet", "up-block") == len(unet["up_block_types"])
    assert count("vae", "up-block") == len(vae["up_block_types"])
    cross = [t for t in unet["down_block_types"] + unet["up_block_types"] if "CrossAttn" in t]
    layers = unet["layers_per_block"]
    # Cross-attention down blocks: one transformer per resnet; up blocks: one more each;
    # plus the mid block's one.
    transformers = sum(layers + ("Up" in t) for t in cross) + 1
    assert count("unet", "transformer") == transformers
    assert count("unet", "attention") == 2 * transformers  # attn1 (self) + attn2 (cross)
    assert sum(r.block.endswith(".attn1") for r in rows) == transformers
    assert sum(r.block.endswith(".attn2") for r in rows) == transformers
    resnets = (len(unet["down_block_types"]) * layers + 2
               + len(unet["up_block_types"]) * (layers + 1))
    assert count("unet", "resnet") == resnets
    assert count("vae", "resnet") == 2 + len(vae["up_block_types"]) * (vae["layers_per_block"] + 1)
    assert {"conv_in", "conv_norm_out", "conv_out", "time_embedding", "mid_block"} <= blocks
    assert {"post_quant_conv", "decoder.conv_in", "decoder.mid_block",
            "decoder.conv_norm_out", "decoder.conv_out"} <= blocks
    assert not any(r.block.startswith("encoder.") for r in rows if r.part == "vae")


# ---- the harness can fail ------------------------------------------------------------------

@pytest.fixture(scope="module", params=TARGETS)
def resnet(request):
    """One UNet resnet, captured, exported and compiled alone: (exported, executor)."""
    first = verify.one_per_kind()
    _, _, found = next(verify.capture(
        _model("tiny"), ["unet"], blocks=lambda part, path, kind: kind == "resnet"
        and first(part, path, kind)))
    assert len(found) == 1
    exported = verify.export_block(found[0], "float32", "resnet")
    assert exported.error is None, exported.error
    groups, _ = verify.compile_blocks([exported], make_target(request.param))
    return exported, groups[0][1]


def _psnr(resnet, inputs=None, weights=None) -> float:
    exported, executor = resnet
    outputs = verify.run_block(executor, exported, inputs=inputs, weights=weights)
    return verify.psnr(outputs, [r.numpy() for r in exported.block.reference])[0]


def test_unperturbed_block_passes(resnet):
    assert _psnr(resnet) >= verify.FP32_BAR_DB


def test_perturbed_weight_fails(resnet):
    exported, _ = resnet
    weights = [w.copy() for w in exported.weights]
    index = exported.weight_names.index("block.conv2.weight")  # the last conv's kernel
    typical = float(np.abs(weights[index]).mean())
    weights[index].flat[0] += 10 * typical  # ONE element of one weight
    assert _psnr(resnet, weights=weights) < verify.FP32_BAR_DB
    weights[index] *= 1.5  # the whole kernel 50 % off fails the fp16 bar too
    assert _psnr(resnet, weights=weights) < verify.FP16_BAR_DB


def test_wrong_input_fails(resnet):
    exported, _ = resnet
    inputs = [x.copy() for x in exported.inputs]
    inputs[0] = np.ascontiguousarray(inputs[0][..., ::-1])  # hidden states mirrored
    assert _psnr(resnet, inputs=inputs) < verify.FP16_BAR_DB


def test_sweep_reports_a_broken_block(monkeypatch):
    """End to end: a weight broken on the compiled side shows as FAIL in the table."""
    export = verify.export_block

    def broken(block, dtype, name):
        exported = export(block, dtype, name)
        exported.weights = [w.copy() for w in exported.weights]
        exported.weights[0] += 1.0
        return exported

    monkeypatch.setattr(verify, "export_block", broken)
    first = verify.one_per_kind()
    rows = verify.verify_layers(_model("tiny"), log=None, parts=["unet"],
                                blocks=lambda part, path, kind: kind == "conv"
                                and first(part, path, kind))
    assert [r.block for r in rows] == ["conv_in"]
    assert not rows[0].passed and rows[0].psnr < verify.FP32_BAR_DB
    report = verify.format_report(rows)
    assert "FAIL" in report and "1 FAIL" in report.splitlines()[-1]


# ---- definitions ---------------------------------------------------------------------------

def test_psnr_definition():
    ref = [np.array([1.0, -2.0]), np.array([[0.5]])]
    assert verify.psnr(ref, ref) == (math.inf, 0.0)
    out = [np.array([1.0, -2.0]), np.array([[0.8]])]
    rmse = math.sqrt(0.3 ** 2 / 3)
    value, max_abs = verify.psnr(out, ref)
    assert value == pytest.approx(20 * math.log10(2.0 / rmse))
    assert max_abs == pytest.approx(0.3)
    assert verify.psnr([np.array([np.nan, 0.0])], [np.array([1.0, 0.0])])[0] == -math.inf
    assert (verify.FP32_BAR_DB, verify.FP16_BAR_DB) == (60.0, 35.0)


def test_report_format():
    rows = [verify.Row("unet", "conv_in", "conv", "float32", "llvm", 120.0, 1e-6, True, 0.1),
            verify.Row("vae", "decoder.conv_out", "conv", "float32", "llvm", 20.0, 0.5, False,
                       0.2)]
    report = verify.format_report(rows)
    lines = report.splitlines()
    assert "PSNR" in lines[0] and "max abs err" in lines[0]
    assert "PASS" in lines[2] and "FAIL" in lines[3]
    assert len({len(line.rstrip()) for line in lines[2:4]}) == 1  # fixed width
    assert "2 blocks" in lines[-1] and "min PSNR 20.0 dB" in lines[-1]
    assert "60 dB" in lines[-1] and "1 FAIL" in lines[-1]

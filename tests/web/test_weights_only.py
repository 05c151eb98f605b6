"""`wsd build --target webgpu --weights-only --from DIR`: another checkpoint of the same
architecture for a compiled bundle, without compiling. The result must be exactly the bundle
a full build of that checkpoint writes; a checkpoint of another architecture is refused with
the differences named, and nothing is written."""

from __future__ import annotations

import json
import shutil

import pytest

from wsd.cli import main
from wsd.models import load_model


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory):
    """The tiny architecture with other weights (seed 1), as a diffusers folder."""
    from wsd.checks.reference import Reference

    folder = tmp_path_factory.mktemp("models") / "tiny-other"
    Reference(load_model("tiny", seed=1)).save(folder)
    return folder


def files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_bundle_as_a_full_build(tiny_bundle, other_checkpoint, tmp_path, capsys):
    out = tmp_path / "weights-only"
    code, err = run(capsys, "build", "--target", "webgpu", "--weights-only", "--from",
                    tiny_bundle, "--model", other_checkpoint, "--out", out)
    assert code == 0, err
    full = tmp_path / "full"
    assert main(["build", "--target", "webgpu", "--model", str(other_checkpoint),
                 "--out", str(full)]) == 0
    got, want = files(out), files(full)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], f"{name} differs from the full build's"
    # the weights really are the other checkpoint's
    source = files(tiny_bundle)
    assert got["params/tensor-cache.json"] != source["params/tensor-cache.json"]
    assert got["model.wasm"] == source["model.wasm"]


def test_in_place_keeps_the_compiled_code(tiny_bundle, other_checkpoint, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    code, err = run(capsys, "build", "--target", "webgpu", "--weights-only", "--from", bundle,
                    "--model", other_checkpoint, "--out", bundle)
    assert code == 0, err
    config = json.loads((bundle / "wsd-config.json").read_text())
    assert config["model"] == "tiny-other"
    assert (bundle / "model.wasm").read_bytes() == (tiny_bundle / "model.wasm").read_bytes()
    assert not list(tmp_path.glob(".bundle.weights-*"))  # no staging folder left


def test_other_architecture_refused(tiny_bundle, other_checkpoint, tmp_path, capsys):
    wide = tmp_path / "wide"
    shutil.copytree(other_checkpoint, wide)
    unet_config = wide / "unet" / "config.json"
    config = json.loads(unet_config.read_text())
    width = config["cross_attention_dim"]
    config["cross_attention_dim"] = width * 2
    unet_config.write_text(json.dumps(config))
    out = tmp_path / "out"
    code, err = run(capsys, "build", "--target", "webgpu", "--weights-only", "--from",
                    tiny_bundle, "--model", wide, "--out", out)
    assert code == 2
    assert "does not have the architecture" in err
    assert f"unet.cross_attention_dim: bundle {width}, model {width * 2}" in err
    assert not out.exists()


def test_bundle_without_records_refused(tiny_bundle, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    config = json.loads((old / "wsd-config.json").read_text())
    del config["weight_meta"]
    (old / "wsd-config.json").write_text(json.dumps(config))
    code, err = run(capsys, "build", "--target", "webgpu", "--weights-only", "--from", old,
                    "--out", tmp_path / "out")
    assert code == 2 and "built by an older wsd" in err


@pytest.mark.parametrize("extra, message", [
    ([], "--weights-only needs --from DIR"),
    (["--from", "{bundle}", "--dtype", "float16"], "--dtype: a --weights-only bundle keeps"),
    (["--from", "{missing}"], "is not a web bundle: it has no wsd-config.json"),
    (["--from", "{bundle}", "--verify"], "--weights-only compiles nothing"),
])
def test_bad_options(tiny_bundle, tmp_path, capsys, extra, message):
    extra = [e.format(bundle=tiny_bundle, missing=tmp_path / "nothing") for e in extra]
    code, err = run(capsys, "build", "--target", "webgpu", "--weights-only", *extra,
                    "--out", tmp_path / "out")
    assert code == 2 and message in err, err


def test_from_without_weights_only(tmp_path, capsys):
    code, err = run(capsys, "build", "--target", "webgpu", "--from", tmp_path, "--out", tmp_path)
    assert code == 2 and "--from is only for --weights-only" in err


def test_lora_weights(tiny_bundle, tmp_path, capsys):
    """`--lora`: the bundle's shards carry the fused weights (those the native runtime
    uploads for the same LoRA), wsd-config.json names the LoRA, the compiled code is the
    source bundle's."""
    import hashlib

    import numpy as np

    from tests.numerics.test_lora import TE_TARGETS, UNET_TARGETS, random_pairs, write_kohya
    from wsd.runtime.weights import collect_weights, load_tensor_cache

    tiny = load_model("tiny")
    lora = write_kohya(tmp_path / "style.safetensors",
                       random_pairs(tiny.unet(), UNET_TARGETS, seed=5),
                       random_pairs(tiny.text_encoder(), TE_TARGETS, seed=6))
    out = tmp_path / "with-lora"
    code, err = run(capsys, "build", "--target", "webgpu", "--weights-only", "--from",
                    tiny_bundle, "--model", "tiny", "--lora", f"{lora}:0.75", "--out", out)
    assert code == 0, err
    config = json.loads((out / "wsd-config.json").read_text())
    assert config["loras"] == [{"file": "style.safetensors", "scale": 0.75,
                                "sha256": hashlib.sha256(lora.read_bytes()).hexdigest()}]
    assert json.loads((tiny_bundle / "wsd-config.json").read_text())["loras"] == []
    assert (out / "model.wasm").read_bytes() == (tiny_bundle / "model.wasm").read_bytes()

    got, base = load_tensor_cache(out / "params"), load_tensor_cache(tiny_bundle / "params")
    want = collect_weights(tiny.with_loras([(lora, 0.75)]),
                           {"dtype": config["dtype"], "functions": config["weight_meta"]})
    assert sorted(got) == sorted(want.tensors)
    changed = set()
    for name, array in want.tensors.items():
        assert np.array_equal(got[name], array), name
        if not np.array_equal(got[name], base[name]):
            changed.add(name.split("/")[0])
    assert changed == {"unet", "text_encoder"}

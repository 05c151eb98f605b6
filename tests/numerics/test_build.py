"""The library cache: a second build of the same settings compiles nothing. `wsd build
--verify`: the build checks every block on its target first, and refuses naming failures."""

import dataclasses

import pytest

import wsd.runtime.library
from wsd.checks import verify
from wsd.cli import main
from wsd.models import load_model
from wsd.runtime.library import build, library_key
from wsd.targets import make as make_target


def test_second_build_is_served_from_cache(monkeypatch):
    model = load_model("tiny")
    first = build(model, "llvm", "float32", log=lambda _: None)

    def no_tracing(*_args, **_kwargs):
        raise AssertionError("a cached library was traced again")

    monkeypatch.setattr(wsd.runtime.library, "trace_model", no_tracing)
    messages = []
    second = build(model, "llvm", "float32", log=messages.append)
    assert second.path == first.path
    assert any("using cached library" in m for m in messages)
    assert set(second.meta["functions"]) == {"encode_text", "encode_image", "unet_guided", "unet",
                                             "decode"}
    # llvm reads linear weights as (K, N): the build stores them so (wsd.compiler.layout.WeightLayouts)
    assert [1, 0] in second.meta["functions"]["unet"]["weight_layouts"]


def test_key_depends_on_every_setting():
    tiny, sd15 = load_model("tiny"), load_model("sd15")
    llvm = make_target("llvm")
    base = library_key(tiny, llvm, "float32", 128, 128)
    assert library_key(tiny, llvm, "float32", 128, 128) == base
    others = {
        library_key(sd15, llvm, "float32", 128, 128),
        library_key(tiny, llvm, "float16", 128, 128),
        library_key(tiny, llvm, "float32", 128, 192),
        library_key(tiny, llvm, "float32", 192, 128),
    }
    assert base not in others and len(others) == 4


def test_weights_do_not_change_the_key():
    """Libraries hold no weights: another checkpoint of the architecture reuses them."""
    llvm = make_target("llvm")
    assert (library_key(load_model("tiny", seed=0), llvm, "float32", 128, 128)
            == library_key(load_model("tiny", seed=5), llvm, "float32", 128, 128))


def test_cache_location_override(monkeypatch, tmp_path):
    monkeypatch.setenv("WSD_CACHE", str(tmp_path))
    assert wsd.runtime.library.cache_dir() == tmp_path


def test_bad_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype must be one of"):
        build(load_model("tiny"), "llvm", "bfloat16")


@pytest.fixture(scope="module")
def tiny_rows():
    """The per-block check of the tiny model on llvm, run once for the --verify tests."""
    return verify.verify_layers(load_model("tiny"), "llvm", log=None)


def test_build_verify_checks_the_blocks_then_builds(monkeypatch, capsys, tiny_rows):
    asked = []
    monkeypatch.setattr(verify, "verify_layers",
                        lambda model, target, *a, **k: asked.append(target) or tiny_rows)
    assert main(["build", "--verify", "--target", "llvm"]) == 0
    out = capsys.readouterr().out
    assert asked == ["llvm"] and "all pass" in out
    assert out.rstrip().splitlines()[-1].endswith(wsd.runtime.library.build(
        load_model("tiny"), "llvm", log=lambda _: None).path.name)


def test_build_verify_refuses_naming_the_failing_blocks(monkeypatch, capsys, tiny_rows):
    failing = dataclasses.replace(tiny_rows[0], psnr=12.5, passed=False)
    monkeypatch.setattr(verify, "verify_layers", lambda *a, **k: [failing, *tiny_rows[1:]])
    monkeypatch.setattr(wsd.runtime.library, "build", lambda *a, **k: pytest.fail("built"))
    assert main(["build", "--verify", "--target", "llvm"]) == 2
    err = capsys.readouterr().err
    assert (f"not building: 1 of {len(tiny_rows)} blocks fail on llvm" in err
            and f"{failing.part} {failing.block} (12.5 dB)" in err)


def test_webgpu_bundles_are_verified_on_webgpu_native(monkeypatch, tiny_rows):
    asked = []
    monkeypatch.setattr(verify, "verify_layers",
                        lambda model, target, *a, **k: asked.append(target) or tiny_rows)
    verify.verify_build(load_model("tiny"), "webgpu", "float32", log=None)
    assert asked == ["webgpu-native"]

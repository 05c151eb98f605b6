"""The library cache: a second build of the same settings compiles nothing."""

import pytest

import wsd.runtime.library
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
    assert set(second.meta["functions"]) == {"encode_text", "unet_guided", "unet", "decode"}
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


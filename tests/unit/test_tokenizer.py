"""wsd.runtime.tokenizer vs transformers' CLIPTokenizer (what diffusers uses).

Expected ids come from transformers (fed with vocab files we write) or from
published values, never from our own code. Needs open_clip_torch (vocabulary
file, `pip install --no-deps open_clip_torch`) and transformers (reference).
"""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from wsd.runtime.tokenizer import CLIPTokenizer

if importlib.util.find_spec("open_clip") is None:
    pytest.skip("needs open_clip_torch: pip install --no-deps open_clip_torch", allow_module_level=True)
transformers = pytest.importorskip("transformers")

from tests.cases import BOS, EOS, LONG, PROMPTS  # noqa: E402
LONG = ", ".join(["a highly detailed oil painting of a majestic castle on a hill at sunset"] * 8)



def _write_vocab_files(tok: CLIPTokenizer, directory: Path) -> Path:
    tok.save_pretrained_files(directory)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        (directory / name).unlink()
    return directory


def _token(content: str, normalized: bool = True) -> dict:
    return {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False, "single_word": False}


def _sd15_hub_files(directory: Path, pad: str = EOS) -> None:
    """tokenizer_config.json / special_tokens_map.json as in runwayml/stable-diffusion-v1-5
    (``pad="!"`` gives stabilityai/stable-diffusion-2's special_tokens_map)."""
    added = lambda c: {"__type": "AddedToken", **_token(c)}  # noqa: E731
    config = {
        "add_prefix_space": False, "bos_token": added(BOS), "do_lower_case": True, "eos_token": added(EOS),
        "errors": "replace", "model_max_length": 77, "name_or_path": "openai/clip-vit-large-patch14",
        "pad_token": EOS, "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer", "unk_token": added(EOS),
    }
    special = {"bos_token": _token(BOS), "eos_token": _token(EOS), "pad_token": pad, "unk_token": _token(EOS)}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    (directory / "special_tokens_map.json").write_text(json.dumps(special))


def _hf_fixed(hf, text: str) -> list[int]:
    return hf(text, padding="max_length", max_length=77, truncation=True)["input_ids"]


def _assert_same(ours: CLIPTokenizer, hf, prompts) -> None:
    for p in prompts:
        assert ours.encode(p) == hf(p)["input_ids"], f"encode differs for {p!r}"
        assert ours(p).tolist() == _hf_fixed(hf, p), f"padded ids differ for {p!r}"


@pytest.fixture(scope="module")
def ours() -> CLIPTokenizer:
    return CLIPTokenizer.default()


@pytest.fixture(scope="module")
def vocab_dir(ours, tmp_path_factory) -> Path:
    """vocab.json + merges.txt only."""
    return _write_vocab_files(ours, tmp_path_factory.mktemp("vocab"))


@pytest.fixture(scope="module")
def sd15_dir(vocab_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sd15") / "tokenizer"
    shutil.copytree(vocab_dir, d)
    _sd15_hub_files(d)
    return d


@pytest.fixture(scope="module")
def hf_sd15(sd15_dir):
    """What diffusers' StableDiffusionPipeline loads for SD 1.5."""
    return transformers.CLIPTokenizer.from_pretrained(sd15_dir)


# ---------------------------------------------------------------- vocabulary
def test_vocab_size_and_special_ids(ours):
    assert ours.vocab_size == 49408
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (49406, 49407, 49407)
    assert ours.model_max_length == 77


def test_known_ids(ours):
    # widely published SD 1.5 / CLIP ids
    assert ours.encode("a photograph of an astronaut riding a horse") == [
        49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407]
    assert ours.encode("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ours.encode("") == [49406, 49407]
    # open_clip's output in diffusers issue #4153
    assert ours.encode("! !! !!!") == [49406, 256, 748, 995, 49407]
    assert ours("a photo of a cat").tolist() == [49406, 320, 1125, 539, 320, 2368] + [49407] * 71


def test_vocab_files_match_transformers_vocab(ours, vocab_dir):
    hf = transformers.CLIPTokenizer(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"))
    vocab = hf.get_vocab()
    assert len(vocab) == 49408
    assert vocab[BOS] == 49406 and vocab[EOS] == 49407
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab["a</w>"] == 320
    merges = (vocab_dir / "merges.txt").read_text(encoding="utf-8").split("\n")
    assert merges[0].startswith("#version") and merges[1] == "i n" and len([m for m in merges[1:] if m]) == 48894


# ------------------------------------------------------- ids vs transformers
@pytest.mark.parametrize("prompt", PROMPTS, ids=range(len(PROMPTS)))
def test_matches_diffusers_sd15_tokenizer(ours, hf_sd15, prompt):
    assert ours.encode(prompt) == hf_sd15(prompt)["input_ids"]
    fixed = ours(prompt)
    assert fixed.dtype == np.int32 and fixed.shape == (77,)
    assert fixed.tolist() == _hf_fixed(hf_sd15, prompt)


def test_matches_plain_transformers_constructor(vocab_dir):
    """transformers.CLIPTokenizer(vocab_file, merges_file): no normalized special tokens."""
    ours_plain = CLIPTokenizer.from_pretrained_dir(vocab_dir)
    classes = {transformers.CLIPTokenizer, getattr(transformers, "CLIPTokenizerFast", transformers.CLIPTokenizer)}
    for cls in classes:
        hf = cls(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"))
        assert hf.vocab_size == 49408
        _assert_same(ours_plain, hf, PROMPTS)


def test_random_strings_match(ours, hf_sd15):
    rng = random.Random(1234)
    alphabet = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 '!?.,;:-_()[]{}<>|/\\\"@#$%^&*+=~`"
                "\t\néèàüößçñøåΣσς中文日本語한국어Приветمرحباṩǅİ😀🎨👍🏽\u0301\u0323\u200d\ufe0f")
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(2000)]
    texts += [rng.choice(["", " ", "<|", "x"]) + rng.choice([BOS, EOS, BOS.upper(), EOS.title()]) + "!x" for _ in range(50)]
    expected = hf_sd15(texts)["input_ids"]
    for text, ids in zip(texts, expected):
        assert ours.encode(text) == ids, repr(text)


def test_unicode_sweep_matches(ours, hf_sd15):
    """Every code point of planes 0-3 and the tag/variation-selector block, in runs of 16."""
    cps = [c for c in range(0x40000) if not 0xD800 <= c < 0xE000] + list(range(0xE0000, 0xE01F0))
    texts = ["".join(map(chr, cps[i : i + 16])) for i in range(0, len(cps), 16)]
    texts += [f"A{chr(c)}b {chr(c)}{chr(c)}" for c in cps[:0x3000]]
    expected = hf_sd15(texts)["input_ids"]
    bad = [t for t, ids in zip(texts, expected) if ours.encode(t) != ids]
    assert not bad, f"{len(bad)} mismatches, first code points: {[hex(ord(c)) for c in bad[0]]}"


def test_truncation_keeps_bos_and_eos(ours, hf_sd15):
    full = ours.encode(LONG)
    assert len(full) > 77 and full == hf_sd15(LONG)["input_ids"]
    fixed = ours(LONG)
    assert fixed.tolist() == _hf_fixed(hf_sd15, LONG)
    assert fixed[0] == 49406 and fixed[-1] == 49407 and fixed.tolist()[1:76] == full[1:76]
    assert ours(LONG, max_length=10).tolist() == hf_sd15(LONG, padding="max_length", max_length=10,
                                                          truncation=True)["input_ids"]


def test_batch_call(ours):
    batch = ours(["a cat", "a dog", LONG])
    assert batch.shape == (3, 77) and batch.dtype == np.int32
    assert [row.tolist() for row in batch] == [ours(p).tolist() for p in ["a cat", "a dog", LONG]]


# ------------------------------------------------------------ tokenizer dirs
def test_from_pretrained_dir_sd15(sd15_dir, hf_sd15):
    tok = CLIPTokenizer.from_pretrained_dir(sd15_dir)
    assert (tok.vocab_size, tok.pad_token_id, tok.model_max_length) == (49408, 49407, 77)
    _assert_same(tok, hf_sd15, PROMPTS)
    # a diffusers model folder (containing tokenizer/) works too
    assert CLIPTokenizer.from_pretrained_dir(sd15_dir.parent).encode("a cat") == [49406, 320, 2368, 49407]


def test_sd2_style_pad_token(vocab_dir, tmp_path):
    """SD 2.x / SDXL tokenizer_2: pad is "!" (id 0); transformers also splits "!" as a special token."""
    _sd15_hub_files(shutil.copytree(vocab_dir, tmp_path / "sd2"), pad="!")
    tok = CLIPTokenizer.from_pretrained_dir(tmp_path / "sd2")
    hf = transformers.CLIPTokenizer.from_pretrained(tmp_path / "sd2")
    assert tok.pad_token_id == 0 == hf.pad_token_id
    assert tok("a cat").tolist() == [49406, 320, 2368, 49407] + [0] * 73
    # diffusers issue #4153: transformers gives 0 for every "!"
    assert tok.encode("! !! !!!") == [49406, 0, 0, 0, 0, 0, 0, 49407]
    _assert_same(tok, hf, PROMPTS)


def test_modern_config_format(vocab_dir, tmp_path):
    """tokenizer_config.json with added_tokens_decoder (as saved by recent transformers)."""
    d = shutil.copytree(vocab_dir, tmp_path / "modern")
    decoder = {"0": {**_token("!", False), "special": True}, "49406": {**_token(BOS, True), "special": True},
               "49407": {**_token(EOS, False), "special": True}}
    (d / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": decoder, "bos_token": BOS, "eos_token": EOS, "pad_token": "!", "unk_token": EOS,
        "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}))
    _assert_same(CLIPTokenizer.from_pretrained_dir(d), transformers.CLIPTokenizer.from_pretrained(d), PROMPTS)


@pytest.mark.parametrize("variant", ["eos_str", "unk_str", "all_dicts", "bos_plain", "eos_only"])
def test_special_token_flags_follow_transformers(vocab_dir, tmp_path, variant):
    """Which config entry decides whether <|endoftext|> is matched case-insensitively."""
    t = lambda c, n=True: {"__type": "AddedToken", **_token(c, n)}  # noqa: E731
    config = {
        "eos_str": {"bos_token": t(BOS), "eos_token": EOS, "pad_token": t(EOS), "unk_token": t(EOS)},
        "unk_str": {"bos_token": t(BOS), "eos_token": t(EOS), "pad_token": t(EOS), "unk_token": EOS},
        "all_dicts": {"bos_token": t(BOS), "eos_token": t(EOS, False), "pad_token": t(EOS), "unk_token": t(EOS)},
        "bos_plain": {"bos_token": t(BOS, False), "eos_token": t(EOS), "pad_token": t(EOS), "unk_token": t(EOS)},
        "eos_only": {"bos_token": t(BOS), "eos_token": t(EOS), "model_max_length": 1000000000000000019884624838656},
    }[variant]
    d = shutil.copytree(vocab_dir, tmp_path / variant)
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    prompts = ["<|ENDOFTEXT|> <|StartOfText|>", f"{EOS}{BOS}", "a <|Endoftext|>b", "x<|STARTOFTEXT|>y"]
    _assert_same(CLIPTokenizer.from_pretrained_dir(d), transformers.CLIPTokenizer.from_pretrained(d), prompts)


def test_save_pretrained_files_round_trip(ours, tmp_path):
    paths = ours.save_pretrained_files(tmp_path / "saved")
    assert {p.name for p in paths} >= {"vocab.json", "merges.txt", "tokenizer_config.json"}
    again = CLIPTokenizer.from_pretrained_dir(tmp_path / "saved")
    hf = transformers.CLIPTokenizer.from_pretrained(tmp_path / "saved")
    assert (again.vocab_size, again.pad_token_id, again.model_max_length) == (49408, 49407, 77)
    assert hf.model_max_length == 77 and hf.pad_token_id == 49407
    for p in PROMPTS:
        assert again.encode(p) == ours.encode(p) == hf(p)["input_ids"], repr(p)


def test_tokenizers_json_equivalent(ours, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    padded = tokenizers.Tokenizer.from_str(ours.to_tokenizers_json())
    plain = tokenizers.Tokenizer.from_str(ours.to_tokenizers_json(padded=False))
    for p in PROMPTS:
        assert padded.encode(p).ids == ours(p).tolist(), repr(p)
        assert plain.encode(p).ids == ours.encode(p), repr(p)
    # a folder holding only tokenizer.json (+ config), as transformers 5 saves it
    d = tmp_path / "json_only"
    d.mkdir()
    (d / "tokenizer.json").write_text(ours.to_tokenizers_json(padded=False), encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}))
    hf = transformers.CLIPTokenizer.from_pretrained(d)
    _assert_same(CLIPTokenizer.from_pretrained_dir(d), hf, PROMPTS)


# -------------------------------------------------------------------- errors
def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        CLIPTokenizer.from_pretrained_dir(tmp_path / "nope")


def test_missing_vocab_file(vocab_dir, tmp_path):
    d = shutil.copytree(vocab_dir, tmp_path / "t")
    (d / "vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        CLIPTokenizer.from_pretrained_dir(d)


def test_missing_merges_file(vocab_dir, tmp_path):
    d = shutil.copytree(vocab_dir, tmp_path / "t")
    (d / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        CLIPTokenizer.from_pretrained_dir(d)


@pytest.mark.parametrize("content", ['{"a": 0,', '["a", "b"]', '{"a": "zero"}', "{}"])
def test_malformed_vocab_json(vocab_dir, tmp_path, content):
    d = shutil.copytree(vocab_dir, tmp_path / "t")
    (d / "vocab.json").write_text(content)
    with pytest.raises(ValueError, match="vocab.json"):
        CLIPTokenizer.from_pretrained_dir(d)


def test_malformed_merges(vocab_dir, tmp_path):
    d = shutil.copytree(vocab_dir, tmp_path / "t")
    (d / "merges.txt").write_text("#version: 0.2\ni n\nthree parts here\n")
    with pytest.raises(ValueError, match="merges.txt"):
        CLIPTokenizer.from_pretrained_dir(d)
    (d / "merges.txt").write_text("#version: 0.2\nqq zz\n")
    with pytest.raises(ValueError, match="merges.txt"):
        CLIPTokenizer.from_pretrained_dir(d)


def test_malformed_config(vocab_dir, tmp_path):
    d = shutil.copytree(vocab_dir, tmp_path / "t")
    (d / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        CLIPTokenizer.from_pretrained_dir(d)
    (d / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<|notintovocab|>"}))
    with pytest.raises(ValueError, match="notintovocab"):
        CLIPTokenizer.from_pretrained_dir(d)


def test_missing_open_clip_gives_install_hint(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ImportError, match=r"pip install --no-deps open_clip_torch"):
        CLIPTokenizer.default()


def test_runs_without_transformers_torch_or_open_clip_imports():
    code = ("import sys; from wsd.runtime.tokenizer import CLIPTokenizer; t = CLIPTokenizer.default(); t('a cat'); "
            "bad = [m for m in ('open_clip', 'transformers', 'torch', 'tokenizers') if m in sys.modules]; "
            "assert not bad, bad")
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# ------------------------------------------------------------------- speed
def test_speed_1000_prompts():
    tok = CLIPTokenizer.default()  # fresh BPE cache
    subjects = ["cat", "dog", "castle", "robot", "forest", "city", "dragon", "portrait", "ship", "flower"]
    styles = ["oil painting", "photograph", "watercolor", "3d render", "sketch", "anime", "pixel art"]
    prompts = [f"a {styles[i % 7]} of a {subjects[i % 10]} number {i}, highly detailed, trending on artstation, "
               f"by artist{i} and studio{i * 7 % 97}, 8k" for i in range(1000)]
    start = time.perf_counter()
    for p in prompts:
        tok(p)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"1000 prompts took {elapsed:.2f}s"

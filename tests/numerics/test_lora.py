"""LoRA fusing (wsd.models.lora) against diffusers' own load_lora_weights + fuse_lora.

LoRA files are made here with random low-rank weights for the tiny model, in each format
diffusers reads for SD 1.x/2.x: PEFT names written by diffusers' save_lora_weights (with the
adapter metadata that carries lora_alpha), older diffusers names (`.lora.down.weight`,
`processor.to_q_lora`, text encoder `lora_linear_layer`), and kohya names with alphas. They
target UNet attention projections and feed-forwards, resnet convs (3x3 and 1x1 shortcuts),
proj_in/out (1x1 convs in SD 1.x), time-embedding projections, and the text encoder's q/k/v/
out/fc1/fc2.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from wsd.checks.reference import Reference, Settings, peft_version_waiver
from wsd.models import load_model
from wsd.models.lora import LoraError, parse_spec

pytest.importorskip("peft")

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in",
                "proj_out", "conv1", "conv2", "conv_shortcut", "time_emb_proj")
TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
RANK = 4


def _targets(module: torch.nn.Module, suffixes) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in module.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
            and any(name == s or name.endswith("." + s) for s in suffixes)}


def random_pairs(module, suffixes, seed: int, rank: int = RANK, strength: float = 0.3):
    """module name -> (down, up), with up @ down about `strength` of the weight's scale."""
    gen = torch.Generator().manual_seed(seed)
    pairs = {}
    for name, m in sorted(_targets(module, suffixes).items()):
        w = m.weight.detach()
        out, inp = w.shape[:2]
        kernel = tuple(w.shape[2:])
        fan_in = inp * max(1, w[0, 0].numel())
        down = torch.randn((rank, inp, *kernel), generator=gen) / fan_in ** 0.5
        up = torch.randn((out, rank, *((1, 1) if kernel else ())), generator=gen)
        up *= strength * float(w.std()) / rank ** 0.5
        pairs[name] = (down, up)
    return pairs


def _clip_name(name: str) -> str:
    """The text encoder's module name as LoRA files spell it: CLIPTextModel's modules under
    `text_model.` (transformers 5's CLIPTextModel has no such level; wsd and diffusers
    accept both)."""
    return name if name.startswith("text_model.") else f"text_model.{name}"


def write_kohya(path: Path, unet_pairs, te_pairs, alpha: float | None = 2.0, dtype=torch.float32):
    tensors = {}
    for prefix, pairs in (("lora_unet_", unet_pairs), ("lora_te_", te_pairs)):
        for name, (down, up) in pairs.items():
            name = _clip_name(name) if prefix == "lora_te_" else name
            flat = prefix + name.replace(".", "_")
            tensors[f"{flat}.lora_down.weight"] = down.to(dtype).contiguous()
            tensors[f"{flat}.lora_up.weight"] = up.to(dtype).contiguous()
            if alpha is not None:
                tensors[f"{flat}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path))
    return path


def write_old_diffusers(path: Path, unet_pairs, te_pairs):
    """Pre-PEFT diffusers names: attention processors' to_q_lora, `.lora.down`, and the text
    encoder's to_q_lora / lora_linear_layer."""
    tensors = {}
    proj = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora",
            "to_out.0": "to_out_lora"}
    for name, (down, up) in unet_pairs.items():
        attn_proj = next((p for p in proj if name.endswith("." + p) and ".attn" in name), None)
        if attn_proj:
            attn = name[: -len(attn_proj) - 1]
            stem = f"unet.{attn}.processor.{proj[attn_proj]}"
            tensors[f"{stem}.down.weight"], tensors[f"{stem}.up.weight"] = down, up
        else:
            tensors[f"unet.{name}.lora.down.weight"] = down
            tensors[f"unet.{name}.lora.up.weight"] = up
    te_proj = {"q_proj": "to_q_lora", "k_proj": "to_k_lora", "v_proj": "to_v_lora",
               "out_proj": "to_out_lora"}
    for name, (down, up) in te_pairs.items():
        name = _clip_name(name)
        stem_name, _, last = name.rpartition(".")
        stem = (f"text_encoder.{stem_name}.{te_proj[last]}" if last in te_proj
                else f"text_encoder.{name}.lora_linear_layer")
        tensors[f"{stem}.down.weight"], tensors[f"{stem}.up.weight"] = down, up
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def write_peft(path: Path, unet, text_encoder, unet_pairs, te_pairs, alpha: int = 8):
    """PEFT names and adapter metadata, through peft's adapters and diffusers' saver."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    layers, metadata = {}, {}
    for part, module, pairs, suffixes in (("unet", unet, unet_pairs, UNET_TARGETS),
                                          ("text_encoder", text_encoder, te_pairs, TE_TARGETS)):
        module = copy.deepcopy(module)
        config = LoraConfig(r=RANK, lora_alpha=alpha, target_modules=sorted(pairs),
                            init_lora_weights=False)
        with peft_version_waiver():
            module.add_adapter(config)
        state = get_peft_model_state_dict(module)
        for name, (down, up) in pairs.items():
            state[f"{name}.lora_A.weight"] = down
            state[f"{name}.lora_B.weight"] = up
        assert len(state) == 2 * len(pairs), "peft made other LoRA layers than asked"
        layers[part] = {k: v.contiguous() for k, v in state.items()}
        metadata[part] = config.to_dict()
    StableDiffusionPipeline.save_lora_weights(
        path.parent, unet_lora_layers=layers["unet"],
        text_encoder_lora_layers=layers["text_encoder"], weight_name=path.name,
        unet_lora_adapter_metadata=metadata["unet"],
        text_encoder_lora_adapter_metadata=metadata["text_encoder"])
    return path


# ---- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


@pytest.fixture(scope="module")
def base(tiny):
    return {"unet": tiny.unet(), "text_encoder": tiny.text_encoder()}


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory, base):
    folder = tmp_path_factory.mktemp("loras")
    unet_pairs = random_pairs(base["unet"], UNET_TARGETS, seed=1)
    te_pairs = random_pairs(base["text_encoder"], TE_TARGETS, seed=2)
    unet_pairs2 = random_pairs(base["unet"], ("to_k", "to_v", "conv2"), seed=3, rank=2)
    # out_proj too: diffusers reads kohya's q/k/v names (to_q_lora after its renaming) only
    # when an out_proj LoRA is present (that is how it detects the old naming)
    te_pairs2 = random_pairs(base["text_encoder"], ("q_proj", "out_proj", "fc2"), seed=4,
                             rank=2)
    return {
        "kohya": write_kohya(folder / "kohya.safetensors", unet_pairs, te_pairs, alpha=2.0),
        "kohya_fp16": write_kohya(folder / "kohya16.safetensors", unet_pairs2, te_pairs2,
                                  alpha=None, dtype=torch.float16),
        "old": write_old_diffusers(folder / "old.safetensors", unet_pairs, te_pairs),
        "peft": write_peft(folder / "peft.safetensors", base["unet"], base["text_encoder"],
                           unet_pairs, te_pairs, alpha=8),
    }


def diffusers_fused(tiny, loras):
    """diffusers' fused UNet and text encoder state dicts for (path, scale) pairs."""
    ref = Reference(replace(tiny, loras=tuple((Path(p), s) for p, s in loras)))
    return {"unet": ref.pipe.unet.state_dict(), "text_encoder": ref.pipe.text_encoder.state_dict()}


def assert_same_weights(ours: torch.nn.Module, theirs: dict, base: torch.nn.Module,
                        rtol: float = 1e-6):
    ours_sd, base_sd = ours.state_dict(), base.state_dict()
    assert set(ours_sd) == set(theirs)
    changed = 0
    for name, tensor in ours_sd.items():
        ref = theirs[name]
        err = float((tensor - ref).norm()) / max(float(ref.norm()), 1e-30)
        assert err <= rtol, f"{name}: relative difference {err:.2e}"
        changed += not torch.equal(tensor, base_sd[name])
    return changed


# ---- fused weights -------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,scale", [("kohya", 1.0), ("kohya_fp16", 1.0), ("old", 0.7),
                                       ("peft", 1.0), ("peft", 0.5)])
def test_fused_weights_match_diffusers(tiny, base, lora_files, fmt, scale):
    model = tiny.with_loras([(lora_files[fmt], scale)])
    theirs = diffusers_fused(tiny, [(lora_files[fmt], scale)])
    for part in ("unet", "text_encoder"):
        module = getattr(model, part)()
        changed = assert_same_weights(module, theirs[part], base[part])
        assert changed > 0, f"{fmt} changed nothing in the {part}"


def test_two_loras_compose(tiny, base, lora_files):
    loras = [(lora_files["kohya"], 0.8), (lora_files["kohya_fp16"], -0.5)]
    model = tiny.with_loras([f"{lora_files['kohya']}:0.8", f"{lora_files['kohya_fp16']}:-0.5"])
    assert model.loras == tuple(loras)
    theirs = diffusers_fused(tiny, loras)
    for part in ("unet", "text_encoder"):
        assert_same_weights(getattr(model, part)(), theirs[part], base[part])


def test_scale_zero_is_the_base_model(tiny, base, lora_files):
    model = tiny.with_loras([(lora_files["peft"], 0.0)])
    for part in ("unet", "text_encoder"):
        ours = getattr(model, part)().state_dict()
        for name, tensor in base[part].state_dict().items():
            assert torch.equal(ours[name], tensor), name


def test_loras_do_not_change_the_library_key(tiny, lora_files):
    model = tiny.with_loras([lora_files["kohya"]])
    assert model.config_hash() == tiny.config_hash()
    assert model.architecture() == tiny.architecture()


def test_format_alpha_semantics(tiny, base, lora_files, tmp_path):
    """alpha/rank: the kohya file's alpha 2 at rank 4 halves the product; a file written
    without alphas with the product pre-halved fuses to the same weights."""
    from safetensors.torch import load_file

    tensors = load_file(str(lora_files["kohya"]))
    halved = {k: (v * 0.5 if k.endswith("lora_up.weight") else v)
              for k, v in tensors.items() if not k.endswith(".alpha")}
    save_file(halved, str(tmp_path / "no-alpha.safetensors"))
    a = tiny.with_loras([lora_files["kohya"]]).unet().state_dict()
    b = tiny.with_loras([tmp_path / "no-alpha.safetensors"]).unet().state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-7)


# ---- parsing and bad inputs ----------------------------------------------------------------
@pytest.mark.parametrize("text,path,scale", [
    ("a.safetensors", "a.safetensors", 1.0), ("a.safetensors:0.6", "a.safetensors", 0.6),
    ("dir:x/a.safetensors", "dir:x/a.safetensors", 1.0),
    ("dir:x/a.safetensors:-1.5", "dir:x/a.safetensors", -1.5), ("a:1e-1", "a", 0.1)])
def test_parse_spec(text, path, scale):
    assert parse_spec(text) == (Path(path), scale)


def _one_pair(tmp_path, name, tensors):
    path = tmp_path / name
    save_file(tensors, str(path))
    return path


def test_bad_files(tiny, tmp_path, lora_files):
    with pytest.raises(LoraError, match="does not exist"):
        tiny.with_loras([tmp_path / "missing.safetensors"])
    (tmp_path / "pickle.ckpt").write_bytes(b"\x80\x04\x95 not safetensors at all" * 4)
    with pytest.raises(LoraError, match="not a safetensors file"):
        tiny.with_loras([tmp_path / "pickle.ckpt"])
    data = Path(lora_files["kohya"]).read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LoraError, match="cut.safetensors"):
        tiny.with_loras([tmp_path / "cut.safetensors"])
    with pytest.raises(LoraError, match="is not a file"):
        tiny.with_loras([tmp_path])


def test_bad_keys(tiny, tmp_path):
    d, u = torch.zeros(4, 32), torch.zeros(32, 4)
    sdxl = _one_pair(tmp_path, "sdxl.safetensors", {
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": d,
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": u})
    with pytest.raises(LoraError, match="SDXL"):
        tiny.with_loras([sdxl])
    unknown = _one_pair(tmp_path, "unknown.safetensors", {"model.diffusion.weight": d})
    with pytest.raises(LoraError, match="no known LoRA format.*model.diffusion.weight"):
        tiny.with_loras([unknown])
    nowhere = _one_pair(tmp_path, "nowhere.safetensors", {
        "lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight": d,
        "lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight": u})
    with pytest.raises(LoraError, match="match no Linear or Conv2d weight.*down_blocks_9"):
        tiny.with_loras([nowhere])
    dora = _one_pair(tmp_path, "dora.safetensors", {
        "lora_unet_conv_in.dora_scale": torch.ones(1)})
    with pytest.raises(LoraError, match="DoRA"):
        tiny.with_loras([dora])
    lonely = _one_pair(tmp_path, "lonely.safetensors", {
        "unet.conv_in.lora_A.weight": torch.zeros(4, 4, 3, 3)})
    with pytest.raises(LoraError, match="no 'up' partner"):
        tiny.with_loras([lonely])


def test_wrong_shapes(tiny, base, tmp_path):
    """A LoRA for another architecture (SD 2.x's 1024-wide cross-attention on SD 1.x's)."""
    name = next(n for n in _targets(base["unet"], ("to_k",)) if "attn2" in n)
    out, inp = base["unet"].get_submodule(name).weight.shape
    flat = "lora_unet_" + name.replace(".", "_")
    path = _one_pair(tmp_path, "sd2.safetensors", {
        f"{flat}.lora_down.weight": torch.zeros(4, 1024),
        f"{flat}.lora_up.weight": torch.zeros(out, 4)})
    with pytest.raises(LoraError, match=rf"unet\.{name}\.weight: the weight is \({out}, {inp}\)"
                                        r".*\(4, 1024\)"):
        tiny.with_loras([path])


# ---- end to end ----------------------------------------------------------------------------
def test_generate_matches_diffusers(tiny, lora_files):
    """The base library, the LoRA-fused weights: diffusers' image with the same LoRA (SSIM),
    and not the image without it."""
    from tests.numerics.test_generate import PROMPT, SSIM_BAR, setup_for, ssim

    from wsd.runtime.pipeline import Pipeline

    setup = setup_for("tiny", "llvm")
    loras = [(lora_files["peft"], 1.0), (lora_files["kohya"], 0.7)]
    model = tiny.with_loras(loras)
    pipe = Pipeline(model, setup.pipe.library)
    settings = Settings(PROMPT, "blurry", "euler", steps=3, seed=7)
    ours = pipe.generate(**settings.as_dict())
    theirs = Reference(model).image(settings, setup.height, setup.width)
    assert ssim(ours, theirs) >= SSIM_BAR
    plain = setup.pipe.generate(**settings.as_dict())
    assert ssim(ours, plain) < 0.9, "the LoRA barely changed the image"


# ---- the command line ----------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    ["build", "--target", "webgpu"],
    ["build", "--target", "webgpu", "--weights-only", "--from", "{src}"],
    ["generate", "--prompt", "a cat", "--steps", "2"],
])
def test_cli_refuses_bad_loras_before_writing(tmp_path, capsys, command):
    """Each failure is named, and nothing is written: not the bundle folder, not the PNG."""
    from wsd.cli import main

    src = tmp_path / "src"
    src.mkdir()
    (src / "wsd-config.json").write_text("{}")
    bad = tmp_path / "bad.safetensors"
    save_file({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight":
               torch.zeros(2, 32)}, str(bad))
    out = tmp_path / "out"
    target = ["--out", str(out) if command[0] == "build" else str(out / "x.png")]
    argv = [a.format(src=src) for a in command] + target
    for lora, message in ((tmp_path / "missing.safetensors", "does not exist"),
                          (bad, "SDXL"), (f"{bad}:abc", "does not exist")):
        assert main(argv + ["--lora", str(lora)]) == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert not out.exists()
    assert sorted(p.name for p in src.iterdir()) == ["wsd-config.json"]


def test_cli_generate_with_lora(tiny, lora_files, tmp_path):
    """`wsd generate --lora PATH:SCALE`: the pipeline's image with the fused weights, and
    the LoRA (file, sha256, scale) in the PNG's parameters."""
    import hashlib

    from PIL import Image

    from tests.numerics.test_generate import PROMPT, setup_for
    from wsd.cli import main
    from wsd.runtime.pipeline import Pipeline

    path = lora_files["kohya"]
    out = tmp_path / "out.png"
    assert main(["generate", "--prompt", PROMPT, "--scheduler", "euler", "--steps", "2",
                 "--seed", "9", "--out", str(out), "--lora", f"{path}:0.5"]) == 0
    png = Image.open(out)
    params = json.loads(png.info["parameters"])
    assert params["loras"] == [{"file": path.name, "scale": 0.5,
                                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}]
    pipe = Pipeline(tiny.with_loras([(path, 0.5)]), setup_for("tiny", "llvm").pipe.library)
    expected = pipe.generate(**Settings(PROMPT, "", "euler", steps=2, seed=9).as_dict())
    assert np.array_equal(np.asarray(png.convert("RGB")), expected)


def test_lora_code_does_not_key_libraries(tmp_path):
    """Editing wsd/models/lora.py (weights only) keeps the cached libraries; editing another
    file of wsd/models does not."""
    import shutil

    import wsd
    from wsd.runtime.library import COMPILER_SOURCES, compiler_fingerprint

    root = Path(wsd.__file__).parent
    for folder in COMPILER_SOURCES:
        shutil.copytree(root / folder, tmp_path / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    before = compiler_fingerprint(tmp_path)
    with open(tmp_path / "models" / "lora.py", "a") as f:
        f.write("\n# edited\n")
    assert compiler_fingerprint(tmp_path) == before
    with open(tmp_path / "models" / "presets.py", "a") as f:
        f.write("\n# edited\n")
    assert compiler_fingerprint(tmp_path) != before


def test_model_folder_with_lora(tiny, lora_files, tmp_path):
    """A diffusers folder's own configs (with their provenance keys) resolve LoRAs as the
    preset does, and fuse to the same weights."""
    folder = tmp_path / "tiny-sd"
    Reference(tiny).save(folder)
    loras = [(lora_files["peft"], 0.5), (lora_files["kohya"], 1.0)]
    ours = load_model(folder).with_loras(loras)
    preset = tiny.with_loras(loras)
    for part in ("unet", "text_encoder"):
        a, b = getattr(ours, part)().state_dict(), getattr(preset, part)().state_dict()
        for name in b:
            assert torch.equal(a[name], b[name]), name


def test_per_module_alpha(tiny, base, tmp_path):
    """kohya's alpha is per module: a module with alpha 1 at rank 4 gets a quarter of its
    product, the others (alpha 2) half. (diffusers 0.42 applies the most common alpha to
    kohya's attention-processor and text-encoder modules instead: its alpha names for
    them match no module, so it is not the reference here.)"""
    from safetensors.torch import load_file

    unet_pairs = random_pairs(base["unet"], ("to_q",), seed=8)
    te_pairs = random_pairs(base["text_encoder"], ("q_proj",), seed=9)
    path = write_kohya(tmp_path / "alphas.safetensors", unet_pairs, te_pairs, alpha=2.0)
    tensors = load_file(str(path))
    odd = [k for k in tensors if k.endswith(".alpha")][:3]
    for key in odd:
        tensors[key] = torch.tensor(1.0)
    save_file(tensors, str(path))
    model = tiny.with_loras([path])
    for part, pairs, prefix in (("unet", unet_pairs, "lora_unet_"),
                                ("text_encoder", te_pairs, "lora_te_")):
        fused, original = getattr(model, part)().state_dict(), base[part].state_dict()
        for name, (down, up) in pairs.items():
            flat = prefix + (_clip_name(name) if part == "text_encoder" else name).replace(".", "_")
            alpha = 1.0 if f"{flat}.alpha" in odd else 2.0
            expected = original[f"{name}.weight"] + (up @ down) * (alpha / RANK)
            torch.testing.assert_close(fused[f"{name}.weight"], expected, rtol=1e-6, atol=1e-7)

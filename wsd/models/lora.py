"""LoRA files fused into a part's weights when the part is loaded (`wsd --lora PATH[:SCALE]`).

A LoRA adds a low-rank product to a Linear or Conv2d weight:

    W += scale * (alpha / rank) * up @ down

`down` is (rank, in) for a Linear, (rank, in, kh, kw) for a conv; `up` is (out, rank), or
(out, rank, 1, 1) for a conv; a conv's product is taken over the rank axis for each kernel
tap. `alpha` is the file's per-module `alpha` entry (kohya), else its PEFT metadata's
`lora_alpha` (with `rank_pattern`/`alpha_pattern`, `use_rslora` giving alpha / sqrt(rank)),
else the rank (a factor of 1). `scale` is the user's (default 1.0).

Fusing happens on the fp32 PyTorch modules that `Model.text_encoder()` / `Model.unet()`
return, so every consumer (the native runtime, the browser's tensor cache, the reference)
sees the fused weights; compiled libraries take weights as inputs and do not change.

File formats (safetensors only), the ones diffusers' `load_lora_weights` reads for SD 1.x/2.x:

    diffusers / PEFT   unet.<module>.lora_A.weight, .lora_B.weight          (PEFT)
                       unet.<module>.lora.down.weight, .lora.up.weight      (older diffusers)
                       unet.<attn>.processor.to_q_lora.down.weight, ...     (attention processors)
                       text_encoder.<module>.lora_linear_layer.down.weight, ...
                       text_encoder.<...>.self_attn.to_q_lora.down.weight   (-> q_proj)
                       optional <module>.alpha entries; the `lora_adapter_metadata` header
                       that diffusers' save_lora_weights writes (r, lora_alpha, patterns)
    kohya / A1111      lora_unet_<module with '_' for '.'>.lora_down.weight, .lora_up.weight,
                       .alpha; lora_te_ (or lora_te1_) for the text encoder

kohya's flattened names are resolved against the part's real module names (each real name
with '.' replaced by '_'), not a table of blocks. SDXL files (lora_te2_, text_encoder_2.),
DoRA and LyCORIS variants (LoHa, LoKr, ...) are refused with a message saying so.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

PARTS = ("unet", "text_encoder")


class LoraError(ValueError):
    """A LoRA file that cannot be fused into the model; the message says why."""


# ---- the command-line form ---------------------------------------------------------------
def parse_spec(text: str) -> tuple[Path, float]:
    """`PATH[:SCALE]`: the last ':'-suffix that parses as a finite float is the scale
    (default 1.0); anything else is all path."""
    head, sep, tail = str(text).rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
        except ValueError:
            pass
        else:
            if not math.isfinite(scale):
                raise LoraError(f"--lora {text}: the scale {tail} is not a finite number")
            return Path(head).expanduser(), scale
    return Path(text).expanduser(), 1.0


def normalize(loras: Iterable) -> tuple[tuple[Path, float], ...]:
    """(path, scale) pairs from `PATH[:SCALE]` strings, paths, or (path, scale) pairs."""
    out = []
    for item in loras:
        if isinstance(item, (tuple, list)):
            path, scale = item
            out.append((Path(path).expanduser(), float(scale)))
        elif isinstance(item, Path):
            out.append((item.expanduser(), 1.0))
        else:
            out.append(parse_spec(item))
    return tuple(out)


# ---- reading a file ----------------------------------------------------------------------
@dataclass
class Entry:
    """One module's low-rank pair, named as in the file; `alpha` None: the file gives none."""

    part: str
    name: str  # a dotted module name (diffusers) or a flattened one (kohya)
    kohya: bool
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None
    key: str = ""  # a key of the file, for messages


@dataclass
class LoraFile:
    path: Path
    entries: list[Entry]
    peft_config: dict  # part -> the PEFT LoraConfig fields in the file's metadata


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    if not path.exists():
        raise LoraError(f"LoRA file {path} does not exist")
    if not path.is_file():
        raise LoraError(f"LoRA file {path} is not a file")
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or int.from_bytes(head, "little") > path.stat().st_size - 8:
        raise LoraError(f"LoRA file {path} is not a safetensors file (only .safetensors LoRAs "
                        "are read; pickled .ckpt/.pt/.bin files are not)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # safetensors raises its own error types for a bad header/data
        raise LoraError(f"LoRA file {path} is not a readable safetensors file "
                        f"(corrupt or truncated?): {err}") from err
    if not tensors:
        raise LoraError(f"LoRA file {path} holds no tensors")
    return tensors, metadata


# diffusers-style suffixes: (suffix, which), tried in order after '.processor.' is dropped.
_DIFFUSERS_SUFFIXES = (
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
    (".alpha", "alpha"),
)
# attention-processor LoRAs: <attn>.to_q_lora.down.weight -> <attn>.<projection>
_PROCESSOR = re.compile(r"^(.*)\.to_(q|k|v|out)_lora\.(down|up)\.weight$")
_PROCESSOR_TARGETS = {"unet": {"q": "to_q", "k": "to_k", "v": "to_v", "out": "to_out.0"},
                      "text_encoder": {"q": "q_proj", "k": "k_proj", "v": "v_proj",
                                       "out": "out_proj"}}
_KOHYA_PREFIXES = (("lora_unet_", "unet"), ("lora_te_", "text_encoder"),
                   ("lora_te1_", "text_encoder"))
_KOHYA_SUFFIXES = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
_LYCORIS = re.compile(r"\.(hada_\w+|lokr_\w+|lora_mid\.weight|diff|diff_b|w_norm|b_norm|"
                      r"oft_\w+|boft_\w+)$")


def _unsupported(key: str) -> str | None:
    """Why a key's kind of file is refused, or None."""
    if key.startswith(("lora_te2_", "text_encoder_2.")):
        return f"{key}: an SDXL LoRA (second text encoder), not supported: wsd runs SD 1.x/2.x"
    if "dora_scale" in key or "lora_magnitude_vector" in key:
        return f"{key}: a DoRA LoRA (magnitude vectors), not supported"
    if _LYCORIS.search(key):
        return f"{key}: a LyCORIS variant (LoHa/LoKr/LoCon-Tucker/...), not supported"
    if key.endswith(".lora_B.bias") or key.endswith(".lora_up.bias"):
        return f"{key}: a LoRA with biases, not supported"
    return None


def read_lora(path) -> LoraFile:
    """Parse a LoRA file into per-module entries (names not yet resolved against a model)."""
    path = Path(path)
    tensors, metadata = _load_tensors(path)
    entries: dict[tuple[str, str], Entry] = {}
    unknown = []
    for key, value in tensors.items():
        reason = _unsupported(key)
        if reason:
            raise LoraError(f"LoRA file {path}: {reason}")
        parsed = _parse_key(key)
        if parsed is None:
            unknown.append(key)
            continue
        part, name, which, kohya = parsed
        entry = entries.setdefault((part, name), Entry(part, name, kohya, key=key))
        if which == "alpha":
            if value.numel() != 1:
                raise LoraError(f"LoRA file {path}: {key} should be one number, "
                                f"has shape {tuple(value.shape)}")
            entry.alpha = float(value.reshape(()).item())
        else:
            if getattr(entry, which) is not None:
                raise LoraError(f"LoRA file {path}: two '{which}' weights for module {name}")
            setattr(entry, which, value.to(torch.float32))
            entry.key = key
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5
                                          else "")
        raise LoraError(f"LoRA file {path}: {len(unknown)} key(s) of no known LoRA format "
                        f"(diffusers/PEFT or kohya names for an SD 1.x/2.x UNet or CLIP text "
                        f"encoder): {shown}")
    for entry in entries.values():
        if entry.down is None or entry.up is None:
            missing = "up" if entry.down is not None else "down"
            if entry.down is None and entry.up is None:
                raise LoraError(f"LoRA file {path}: {entry.key} has no LoRA weights for its "
                                "module")
            raise LoraError(f"LoRA file {path}: {entry.key} has no '{missing}' partner")
    return LoraFile(path, list(entries.values()), _peft_config(path, metadata))


def _parse_key(key: str) -> tuple[str, str, str, bool] | None:
    """(part, module name, down|up|alpha, kohya?) or None for a key of no known format."""
    for prefix, part in _KOHYA_PREFIXES:
        if key.startswith(prefix):
            name, _, suffix = key[len(prefix):].partition(".")
            which = _KOHYA_SUFFIXES.get(suffix)
            return (part, name, which, True) if which and name else None
    part, dot, rest = key.partition(".")
    if part not in PARTS or not dot:
        return None
    rest = rest.replace(".processor.", ".")
    match = _PROCESSOR.match(rest)
    if match:
        attn, proj, which = match.groups()
        return part, f"{attn}.{_PROCESSOR_TARGETS[part][proj]}", which, False
    for suffix, which in _DIFFUSERS_SUFFIXES:
        if rest.endswith(suffix) and len(rest) > len(suffix):
            return part, rest[: -len(suffix)], which, False
    return None


def _peft_config(path: Path, metadata: dict) -> dict:
    """Per part, the PEFT LoraConfig fields diffusers' save_lora_weights stores in the
    header (`lora_adapter_metadata`: JSON, keys `<part>.<field>`)."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except json.JSONDecodeError as err:
        raise LoraError(f"LoRA file {path}: malformed lora_adapter_metadata: {err}") from err
    config: dict = {}
    for key, value in flat.items() if isinstance(flat, dict) else ():
        part, _, field = key.partition(".")
        config.setdefault(part, {})[field] = value
    for part, fields in config.items():
        if fields.get("use_dora"):
            raise LoraError(f"LoRA file {path}: a DoRA LoRA ({part}.use_dora), not supported")
    return config


def _pattern_value(patterns: dict, module: str):
    """PEFT's rule: a pattern key matches a module name that ends with it at a '.' boundary
    (the key is a regular expression); the first key in order that matches wins."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return None


# ---- resolving against a part's modules --------------------------------------------------
def weight_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """name -> weight shape of every Linear and Conv2d module (what a LoRA can target)."""
    return {name: tuple(m.weight.shape) for name, m in module.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


@dataclass
class Delta:
    module: str  # the real module name in the part
    down: torch.Tensor
    up: torch.Tensor
    factor: float  # alpha / rank (without the user's scale)


def resolve(lora: LoraFile, part: str, shapes: dict[str, tuple[int, ...]]) -> list[Delta]:
    """The file's entries for `part`, matched to real module names, shape-checked."""
    flat: dict[str, str | None] = {}
    for name in shapes:
        key = name.replace(".", "_")
        flat[key] = None if key in flat else name  # None: two modules flatten alike
    config = lora.peft_config.get(part, {})
    deltas, seen, unmatched = [], {}, []
    for entry in lora.entries:
        if entry.part != part:
            continue
        names = flat if entry.kohya else shapes
        sep = "_" if entry.kohya else "."
        candidates = [entry.name]
        if part == "text_encoder":  # CLIPTextModel's text_model level: transformers 5 has none
            wrapper = f"text_model{sep}"
            candidates.append(entry.name.removeprefix(wrapper) if entry.name.startswith(wrapper)
                              else wrapper + entry.name)
        name = next((c for c in candidates if c in names), None)
        if entry.kohya and name is not None:
            name = flat[name]  # the real dotted name (None where two flatten alike)
        if name is None:
            unmatched.append(entry.key)
            continue
        if name in seen:
            raise LoraError(f"LoRA file {lora.path}: {seen[name]} and {entry.key} both "
                            f"target {part}.{name}")
        seen[name] = entry.key
        down, up = _check_shapes(lora.path, part, name, shapes[name], entry)
        rank = down.shape[0]
        alpha = entry.alpha
        if alpha is None and config:
            r = _pattern_value(config.get("rank_pattern"), name) or config.get("r", rank)
            alpha = _pattern_value(config.get("alpha_pattern"), name)
            alpha = config.get("lora_alpha", r) if alpha is None else alpha
            factor = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        else:
            factor = 1.0 if alpha is None else alpha / rank
        deltas.append(Delta(name, down, up, factor))
    if unmatched:
        hint = ""
        if any("input_blocks" in k or "output_blocks" in k or "middle_block" in k
               for k in unmatched):
            hint = (" (original-LDM/SGM block names such as input_blocks are not read: "
                    "SD 1.x/2.x kohya LoRAs name diffusers' blocks, down_blocks_0_...)")
        shown = ", ".join(unmatched[:5]) + (f" and {len(unmatched) - 5} more"
                                            if len(unmatched) > 5 else "")
        raise LoraError(f"LoRA file {lora.path}: {len(unmatched)} key(s) match no Linear or "
                        f"Conv2d weight of the model's {part}{hint}: {shown}")
    return deltas


def _check_shapes(path, part, name, shape, entry) -> tuple[torch.Tensor, torch.Tensor]:
    """down, up as (rank, in[, kh, kw]) and (out, rank[, 1, 1]) for a weight of `shape`."""
    down, up = entry.down, entry.up

    def fail():
        raise LoraError(
            f"LoRA file {path}: {entry.key} does not fit {part}.{name}.weight: the weight is "
            f"{tuple(shape)}, the LoRA's down is {tuple(entry.down.shape)} and up "
            f"{tuple(entry.up.shape)} (a LoRA for another model or SD version?)")

    out, inp, kernel = shape[0], shape[1], tuple(shape[2:])
    # a 1x1 conv and a Linear are the same product: accept either form
    if kernel in ((), (1, 1)):
        if down.ndim == 4 and tuple(down.shape[2:]) == (1, 1):
            down = down[:, :, 0, 0]
        if up.ndim == 4 and tuple(up.shape[2:]) == (1, 1):
            up = up[:, :, 0, 0]
        if down.ndim != 2 or up.ndim != 2:
            fail()
        if kernel:
            down, up = down[:, :, None, None], up[:, :, None, None]
    else:
        if down.ndim != 4 or up.ndim != 4 or tuple(up.shape[2:]) != (1, 1):
            fail()
        if tuple(down.shape[2:]) != kernel:
            fail()
    rank = down.shape[0]
    if down.shape[1] != inp or up.shape[0] != out or up.shape[1] != rank:
        fail()
    return down, up


def delta_weight(delta: Delta, scale: float) -> torch.Tensor:
    """scale * alpha/rank * up @ down, shaped as the weight."""
    factor = delta.factor * scale
    if delta.down.ndim == 2:
        return (delta.up @ delta.down) * factor
    out, rank = delta.up.shape[:2]
    product = delta.up.reshape(out, rank) @ delta.down.reshape(rank, -1)
    return product.reshape(out, *delta.down.shape[1:]) * factor


# ---- the Model's entry points ------------------------------------------------------------
def check(loras: Sequence[tuple[Path, float]], shapes: dict[str, dict]) -> list[LoraFile]:
    """Read every file and resolve it against `shapes` (part -> weight_shapes), raising
    LoraError on the first problem; a file that touches no part is an error too."""
    files = []
    for path, scale in loras:
        if not math.isfinite(scale):
            raise LoraError(f"LoRA {path}: the scale {scale} is not a finite number")
        lora = read_lora(path)
        for part in PARTS:
            resolve(lora, part, shapes[part])
        files.append(lora)
    return files


def fuse(module: torch.nn.Module, part: str, loras: Sequence[tuple[Path, float]]):
    """Add each LoRA's product to `module`'s weights in place, in order; returns `module`."""
    if not loras or part not in PARTS:
        return module
    shapes = weight_shapes(module)
    modules = dict(module.named_modules())
    with torch.no_grad():
        for path, scale in loras:
            if scale == 0:
                continue
            for delta in resolve(read_lora(path), part, shapes):
                weight = modules[delta.module].weight
                weight.data += delta_weight(delta, scale).to(weight.dtype)
    return module


def records(loras: Sequence[tuple[Path, float]]) -> list[dict]:
    """What was fused, for wsd-config.json and PNG metadata: file name, sha256, scale."""
    return [{"file": Path(path).name, "sha256": sha256(Path(path)), "scale": scale}
            for path, scale in loras]

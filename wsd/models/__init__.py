"""Which Stable Diffusion model to compile: a built-in preset (wsd.models.presets: `tiny`,
`sd15`, `sd21`, `sd-turbo`, `lcm`, ...) or a local diffusers folder.

`load_model(spec)` returns a `Model`: the configs of its parts (UNet, VAE, CLIP text encoder,
scheduler), its family (wsd.models.families: the defaults that fit it) and loaders for the
PyTorch modules and the tokenizer. Everything downstream (trace, build, runtime, verify)
takes a `Model`, never a spec string.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from wsd.models.families import SD, Family, detect
from wsd.models.presets import PRESETS
from wsd.models.random_weights import randomize_

# Config keys that record who wrote a file, not what the model is.
_PROVENANCE_KEYS = {"_diffusers_version", "_name_or_path", "transformers_version", "architectures"}

# Each part of a diffusers folder: (subfolder, weight file stem). Weights are safetensors or
# PyTorch .bin, plain or as the "fp16" variant (`<stem>.fp16.safetensors`) that many
# downloads carry alone.
_PARTS = {
    "unet": ("unet", "diffusion_pytorch_model"),
    "vae": ("vae", "diffusion_pytorch_model"),
    "text_encoder": ("text_encoder", "model"),
}

def _weight_files(stem: str) -> list[tuple[str, str | None]]:
    """(file name, diffusers variant) in order of preference."""
    bin_stem = "pytorch_model" if stem == "model" else stem
    names = []
    for variant in (None, "fp16"):
        suffix = "" if variant is None else f".{variant}"
        names += [(f"{stem}{suffix}.safetensors", variant), (f"{bin_stem}{suffix}.bin", variant)]
    return names


def _variant(folder: Path, stem: str) -> str | None:
    """The variant of the first weight file present (the folder was validated at load)."""
    return next(v for name, v in _weight_files(stem) if (folder / name).is_file())


class ModelError(ValueError):
    """A model spec or folder that cannot be used; the message says what is wrong."""


@dataclass(frozen=True)
class Model:
    name: str
    configs: dict  # "unet", "vae", "text_encoder", "scheduler" -> config dict
    path: Path | None = None  # diffusers folder, or None for random weights
    seed: int = 0  # seed of the random weights when path is None
    family: Family = SD
    # LoRAs fused into the UNet and text encoder as they load, in order: (file, scale).
    # Weights only: config_hash() and architecture() (and so compiled libraries) ignore them.
    loras: tuple = ()

    # ---- shapes -------------------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.configs["vae"]["block_out_channels"]) - 1)

    @property
    def default_size(self) -> tuple[int, int]:
        """(height, width) in pixels the UNet was trained at."""
        side = self.configs["unet"]["sample_size"] * self.vae_scale_factor
        return side, side

    @property
    def latent_channels(self) -> int:
        return self.configs["unet"]["in_channels"]

    @property
    def text_hidden_size(self) -> int:
        return self.configs["text_encoder"]["hidden_size"]

    @property
    def max_tokens(self) -> int:
        return self.configs["text_encoder"]["max_position_embeddings"]

    @property
    def guidance_embedded(self) -> bool:
        """The UNet takes the guidance scale as an embedding (LCM-distilled UNets): it runs
        once per step on the prompt alone, never on a batch of two."""
        return self.configs["unet"].get("time_cond_proj_dim") is not None

    def settings(self, scheduler: str | None = None, steps: int | None = None,
                 guidance_scale: float | None = None) -> tuple[str, int, float]:
        """(scheduler, steps, guidance scale): those given, the family's defaults for the rest
        (the folder's own scheduler where we have it)."""
        defaults = self.family.defaults(self.configs["scheduler"])
        return (defaults["scheduler"] if scheduler is None else scheduler,
                defaults["steps"] if steps is None else steps,
                defaults["guidance_scale"] if guidance_scale is None else guidance_scale)

    def config_hash(self) -> str:
        """Hash of the architecture (not the weights): it keys compiled libraries."""
        clean = {
            part: {k: v for k, v in cfg.items() if k not in _PROVENANCE_KEYS}
            for part, cfg in self.configs.items()
        }
        blob = json.dumps(clean, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def architecture(self) -> dict:
        """What compiled code depends on, per part: every constructor parameter of the class
        that reads the part's config (diffusers' UNet2DConditionModel and AutoencoderKL,
        transformers' CLIPTextConfig, less the generic ones of its PretrainedConfig base),
        defaults filled in as the class fills them, less what only training reads (dropout,
        initializers). Two models with equal architectures run on the same compiled library,
        whichever keys their config files happen to spell out."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, PretrainedConfig

        generic = set(inspect.signature(PretrainedConfig.__init__).parameters)

        classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL,
                   "text_encoder": CLIPTextConfig}
        parts = {}
        for part, cls in classes.items():
            config = self.configs[part]
            values = {}
            for name, param in inspect.signature(cls.__init__).parameters.items():
                if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL) or name in generic:
                    continue  # generic also holds "self"
                if "dropout" in name or "initializer" in name:
                    continue
                values[name] = config.get(name, param.default)
            parts[part] = json.loads(json.dumps(values, default=str))  # tuples -> lists
        return parts

    # ---- LoRAs (wsd.models.lora) ----------------------------------------------------------
    def with_loras(self, loras) -> "Model":
        """This model with LoRAs (`PATH[:SCALE]` strings or (path, scale) pairs) fused after
        its own, each file read and checked against the architecture now (LoraError)."""
        from dataclasses import replace

        from wsd.models import lora

        added = lora.normalize(loras)
        if not added:
            return self
        shapes = {part: lora.weight_shapes(self._meta_module(part)) for part in lora.PARTS}
        lora.check(added, shapes)
        return replace(self, loras=self.loras + added)

    def _meta_module(self, part: str) -> torch.nn.Module:
        """The part's module on the meta device: names and shapes, no weights."""
        with torch.device("meta"):
            if part == "text_encoder":
                from transformers import CLIPTextConfig, CLIPTextModel

                return CLIPTextModel(CLIPTextConfig(**self.configs["text_encoder"]))
            from diffusers import UNet2DConditionModel

            return UNet2DConditionModel.from_config(self.configs["unet"])

    def _fuse_loras(self, module: torch.nn.Module, part: str) -> torch.nn.Module:
        from wsd.models import lora

        return lora.fuse(module, part, self.loras) if self.loras else module

    # ---- PyTorch modules (fp32, eval mode) ------------------------------------------------
    def text_encoder(self) -> torch.nn.Module:
        from transformers import CLIPTextConfig, CLIPTextModel

        if self.path is None:
            config = CLIPTextConfig(**self.configs["text_encoder"])
            config._attn_implementation = "eager"  # SDPA does not export to valid WGSL
            module = randomize_(CLIPTextModel(config), self.seed)
        else:
            folder = self.path / "text_encoder"
            module = CLIPTextModel.from_pretrained(
                folder, attn_implementation="eager", local_files_only=True,
                variant=_variant(folder, "model"))
        return self._fuse_loras(module.float().eval(), "text_encoder")

    def unet(self) -> torch.nn.Module:
        from diffusers import UNet2DConditionModel

        return self._diffusers_part(UNet2DConditionModel, "unet")

    def vae(self) -> torch.nn.Module:
        from diffusers import AutoencoderKL

        return self._diffusers_part(AutoencoderKL, "vae")

    def _diffusers_part(self, cls, part: str) -> torch.nn.Module:
        if self.path is None:
            module = randomize_(cls(**self.configs[part]), self.seed)
        else:
            module = cls.from_pretrained(
                self.path, subfolder=part, local_files_only=True,
                variant=_variant(self.path / part, "diffusion_pytorch_model"))
        return self._fuse_loras(module.float().eval(), part)

    def tokenizer(self):
        from wsd.runtime.tokenizer import CLIPTokenizer

        if self.path is None:
            return CLIPTokenizer.default(**self.configs.get("tokenizer", {}))
        return CLIPTokenizer.from_pretrained_dir(self.path / "tokenizer")


def load_model(spec: str | Path, seed: int = 0) -> Model:
    """`tiny`, `sd15`, or the path of a diffusers-format folder."""
    spec_str = str(spec)
    if spec_str in PRESETS:
        configs = PRESETS[spec_str]
        return Model(name=spec_str, configs=configs, seed=seed,
                     family=detect(configs, (spec_str,)))
    path = Path(spec_str).expanduser()
    if not spec_str or not path.exists():
        raise ModelError(
            f"model '{spec_str}' is neither a built-in model ({', '.join(PRESETS)}) "
            f"nor an existing folder")
    configs = _read_folder_configs(path)
    index = _read_json(path / "model_index.json")
    family = detect(configs, (path.resolve().name, str(index.get("_name_or_path", ""))))
    return Model(name=path.resolve().name, configs=configs, path=path.resolve(), family=family)


def _read_json(file: Path) -> dict:
    if not file.is_file():
        raise ModelError(f"missing {file}: a diffusers model folder needs it")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"malformed JSON in {file}: {err}") from err
    if not isinstance(data, dict):
        raise ModelError(f"malformed {file}: expected a JSON object")
    return data


def _read_folder_configs(path: Path) -> dict:
    if not path.is_dir():
        raise ModelError(f"model path {path} is not a folder")
    _read_json(path / "model_index.json")
    configs = {}
    for part, (sub, stem) in _PARTS.items():
        configs[part] = _read_json(path / sub / "config.json")
        names = [name for name, _ in _weight_files(stem)]
        if not any((path / sub / name).is_file() for name in names):
            raise ModelError(f"no weights in {path / sub}: expected one of {', '.join(names)}")
    configs["scheduler"] = _read_json(path / "scheduler" / "scheduler_config.json")
    tok = path / "tokenizer"
    has_bpe = (tok / "vocab.json").is_file() and (tok / "merges.txt").is_file()
    if not has_bpe and not (tok / "tokenizer.json").is_file():
        raise ModelError(f"missing tokenizer files in {tok}: "
                         f"expected vocab.json and merges.txt, or tokenizer.json")
    return configs

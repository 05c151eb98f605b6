"""Which Stable Diffusion model to compile: a built-in preset (wsd.models.presets: `tiny`,
`sd15`, `sd21`, `sd-turbo`, `lcm`, ...) or a local diffusers folder.

A VAE can be swapped in (`Model.with_vae`: `--vae`, as diffusers' `vae=` pipeline argument)
and a second one added for previews (`Model.with_preview_vae`: `--preview-vae`, the web
bundle's `decode_preview`): a VAE preset (wsd.models.presets.VAE_PRESETS: `taesd`,
`tiny-taesd`) or a diffusers folder of an AutoencoderKL or AutoencoderTiny (TAESD).

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
from wsd.models.presets import PRESETS, VAE_PRESETS
from wsd.models.random_weights import randomize_, randomize_vae_

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


# The VAE classes a model can decode with (config.json's `_class_name`; a preset's VAE
# without one is an AutoencoderKL).
VAE_CLASSES = ("AutoencoderKL", "AutoencoderTiny")


def vae_class_name(config: dict) -> str:
    return config.get("_class_name") or "AutoencoderKL"


def vae_class(config: dict):
    """diffusers' class of a VAE config."""
    import diffusers

    name = vae_class_name(config)
    if name not in VAE_CLASSES:
        raise ModelError(f"VAE class {name!r} is not supported (supported: "
                         f"{', '.join(VAE_CLASSES)})")
    return getattr(diffusers, name)


def vae_scale_factor(config: dict) -> int:
    """Pixels per latent along each side, as diffusers' pipelines compute it (AutoencoderTiny
    registers its decoder widths as block_out_channels)."""
    widths = config.get("block_out_channels") or config.get("decoder_block_out_channels")
    return 2 ** (len(widths) - 1)


@dataclass(frozen=True)
class VaeSource:
    """Where a swapped-in or preview VAE comes from: a VAE preset (path None: random weights
    drawn with `seed`) or a folder holding its config.json and weights."""

    name: str  # the preset's name, or the folder's
    path: Path | None = None
    seed: int = 0

    def record(self, config: dict) -> dict:
        """What wsd-config.json and PNG parameters say of it."""
        return {"name": self.name, "class": vae_class_name(config),
                "random_weights": self.path is None}


def load_vae(spec: str | Path, seed: int = 0) -> tuple[VaeSource, dict]:
    """(source, config) of `--vae`/`--preview-vae`: a VAE preset, a diffusers VAE folder
    (config.json + diffusion_pytorch_model weights) or a model folder with a `vae/` one."""
    spec_str = str(spec)
    if spec_str in VAE_PRESETS:
        return VaeSource(spec_str, None, seed), dict(VAE_PRESETS[spec_str])
    path = Path(spec_str).expanduser()
    if not spec_str or not path.exists():
        raise ModelError(f"VAE '{spec_str}' is neither a built-in VAE "
                         f"({', '.join(VAE_PRESETS)}) nor an existing folder")
    if not path.is_dir():
        raise ModelError(f"VAE path {path} is not a folder (a diffusers VAE folder holds "
                         f"config.json and diffusion_pytorch_model.safetensors)")
    if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
        path = path / "vae"  # a whole pipeline's folder: its VAE
    if not (path / "config.json").is_file():
        raise ModelError(f"no config.json in VAE folder {path}: a diffusers VAE folder holds "
                         f"config.json and diffusion_pytorch_model.safetensors")
    config = _read_json(path / "config.json")
    name = config.get("_class_name")
    if name not in VAE_CLASSES:
        raise ModelError(f"{path / 'config.json'}: VAE class {name!r} is not supported "
                         f"(supported: {', '.join(VAE_CLASSES)})")
    names = [file for file, _ in _weight_files("diffusion_pytorch_model")]
    if not any((path / file).is_file() for file in names):
        raise ModelError(f"no weights in VAE folder {path}: expected one of {', '.join(names)}")
    return VaeSource(path.resolve().name, path.resolve()), config


def _init_kwargs(cls, config: dict) -> dict:
    """The config's entries that cls's constructor takes (no `_class_name`, no keys that
    diffusers registers after construction)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in config.items() if k in params and k != "self"}


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
    # The VAE in place of the model's own (`--vae`; its config is configs["vae"]) and the
    # preview VAE (`--preview-vae`; configs["preview_vae"], compiled as `decode_preview`):
    # VaeSource, or None. Their configs, not these, key compiled libraries.
    vae_source: VaeSource | None = None
    preview_vae_source: VaeSource | None = None

    # ---- shapes -------------------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        return vae_scale_factor(self.configs["vae"])

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
    def vae_class(self) -> str:
        """The VAE's diffusers class: "AutoencoderKL", or "AutoencoderTiny" (TAESD)."""
        return vae_class_name(self.configs["vae"])

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
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextConfig, PretrainedConfig

        generic = set(inspect.signature(PretrainedConfig.__init__).parameters)

        classes = {"unet": UNet2DConditionModel, "vae": vae_class(self.configs["vae"]),
                   "text_encoder": CLIPTextConfig}
        if "preview_vae" in self.configs:
            classes["preview_vae"] = vae_class(self.configs["preview_vae"])
        parts = {}
        for part, cls in classes.items():
            config = self.configs[part]
            values = {}
            if cls.__name__ != "AutoencoderKL" and part in ("vae", "preview_vae"):
                values["_class_name"] = cls.__name__
            for name, param in inspect.signature(cls.__init__).parameters.items():
                if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL) or name in generic:
                    continue  # generic also holds "self"
                if "dropout" in name or "initializer" in name:
                    continue
                values[name] = config.get(name, param.default)
            parts[part] = json.loads(json.dumps(values, default=str))  # tuples -> lists
        return parts

    # ---- VAEs (--vae, --preview-vae) --------------------------------------------------------
    def with_vae(self, spec: str | Path | None) -> "Model":
        """This model decoding with another VAE (a VAE preset or folder: load_vae), as
        diffusers' `vae=` pipeline argument; None: unchanged."""
        from dataclasses import replace

        if spec is None:
            return self
        source, config = load_vae(spec, self.seed)
        self._check_vae(config, source, "--vae")
        return replace(self, configs={**self.configs, "vae": config}, vae_source=source)

    def with_preview_vae(self, spec: str | Path | None) -> "Model":
        """This model with a second decoder for previews (`decode_preview`): it must take
        the same latents and give the same image size as the model's VAE."""
        from dataclasses import replace

        if spec is None:
            return self
        source, config = load_vae(spec, self.seed)
        self._check_vae(config, source, "--preview-vae")
        if vae_scale_factor(config) != self.vae_scale_factor:
            raise ModelError(f"--preview-vae {source.name} upsamples latents "
                             f"{vae_scale_factor(config)}x, the model's VAE "
                             f"{self.vae_scale_factor}x: the previews would not be the "
                             f"image's size")
        return replace(self, configs={**self.configs, "preview_vae": config},
                       preview_vae_source=source)

    def _check_vae(self, config: dict, source: VaeSource, option: str) -> None:
        vae_class(config)
        channels = config.get("latent_channels", 4)
        if channels != self.latent_channels:
            raise ModelError(f"{option} {source.name} has {channels} latent channels, the "
                             f"model's UNet {self.latent_channels} (its in_channels): they "
                             f"must be equal")

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
        """The VAE (AutoencoderKL or AutoencoderTiny): the model's own, or --vae's."""
        cls = vae_class(self.configs["vae"])
        if self.vae_source is not None:
            return _load_vae(cls, self.configs["vae"], self.vae_source)
        return self._diffusers_part(cls, "vae")

    def preview_vae(self) -> torch.nn.Module:
        """The preview VAE (--preview-vae)."""
        if self.preview_vae_source is None:
            raise ModelError(f"model {self.name} has no preview VAE")
        config = self.configs["preview_vae"]
        return _load_vae(vae_class(config), config, self.preview_vae_source)

    def _diffusers_part(self, cls, part: str) -> torch.nn.Module:
        if self.path is None:
            config = _init_kwargs(cls, self.configs[part])
            randomize = randomize_vae_ if part == "vae" else randomize_
            module = randomize(cls(**config), self.seed)
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


def _load_vae(cls, config: dict, source: VaeSource) -> torch.nn.Module:
    if source.path is None:
        module = randomize_vae_(cls(**_init_kwargs(cls, config)), source.seed)
    else:
        module = cls.from_pretrained(source.path, local_files_only=True,
                                     variant=_variant(source.path, "diffusion_pytorch_model"))
    return module.float().eval()


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

"""Stage 1, trace: PyTorch modules -> torch.export -> TVM Relax.

Each model part is wrapped so that its boundary is what the runtime (native or browser)
hands it: token ids as int32 (WebGPU has no 64-bit integers), timesteps, latents, text
embeddings and the guidance scale as float32 tensors, whatever the model's compute dtype
(scheduler math stays float32), all shapes static (resolution is a build option).
Classifier-free guidance happens inside the compiled UNet function, with the guidance scale
as a runtime input.

`trace_model(model, height, width)` returns one Relax IRModule holding every model function
and the weights of each function, in the function's parameter order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import tvm
from tvm import relax
from tvm.relax.frontend import detach_params
from tvm.relax.frontend.torch import from_exported_program

from wsd import settings
from wsd.compiler.trace_ops import CONVERTERS
from wsd.models import Model


class TextEncoder(torch.nn.Module):
    """int32 token ids (1, 77) -> last hidden state (1, 77, hidden), float32."""

    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        return self.text_encoder(input_ids, return_dict=False)[0].float()


class GuidedUNet(torch.nn.Module):
    """One denoising evaluation with classifier-free guidance, as diffusers computes it:
    the UNet runs on [uncond, cond] and the two noise predictions are mixed by the scale."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, latents, timestep, cond, uncond, guidance_scale):
        dtype = self.unet.dtype
        sample = torch.cat([latents, latents]).to(dtype)
        context = torch.cat([uncond, cond]).to(dtype)
        noise = self.unet(sample, timestep.expand(2), encoder_hidden_states=context,
                          return_dict=False)[0].float()
        noise_uncond, noise_cond = noise.chunk(2)
        return noise_uncond + guidance_scale * (noise_cond - noise_uncond)


class PlainUNet(torch.nn.Module):
    """One denoising evaluation without guidance (diffusers does this when scale <= 1)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, latents, timestep, cond):
        dtype = self.unet.dtype
        return self.unet(latents.to(dtype), timestep, encoder_hidden_states=cond.to(dtype),
                         return_dict=False)[0].float()


class EmbeddedGuidanceUNet(torch.nn.Module):
    """One evaluation of a UNet that takes the guidance scale as an input (LCM-distilled:
    `time_cond_proj_dim`): the scale's sinusoidal embedding enters beside the timestep's, and
    the UNet runs once, on the prompt alone. diffusers embeds (scale - 1) * 1000 with the
    timestep embedding's formula (frequencies 10000^(-k / (half - 1)), sines then cosines)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.dim = unet.config.time_cond_proj_dim

    def forward(self, latents, timestep, cond, guidance_scale):
        dtype = self.unet.dtype
        half = self.dim // 2
        step = torch.log(torch.tensor(10000.0)) / (half - 1)
        freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -step)
        angles = ((guidance_scale - 1) * 1000.0)[:, None] * freqs[None, :]
        embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
        if self.dim % 2:
            embedding = torch.nn.functional.pad(embedding, (0, 1))
        return self.unet(latents.to(dtype), timestep, encoder_hidden_states=cond.to(dtype),
                         timestep_cond=embedding.to(dtype), return_dict=False)[0].float()


class VaeDecoder(torch.nn.Module):
    """Latents -> RGB image (1, H, W, 3) in [0, 1], as diffusers' image processor leaves it.

    The VAE is an AutoencoderKL (post_quant_conv, then the decoder) or an AutoencoderTiny
    (TAESD: its decoder alone, which soft-clamps the latents with tanh and ends in [-1, 1]);
    StableDiffusionPipeline decodes either as `vae.decode(latents / scaling_factor)` (TAESD's
    scaling_factor is 1.0) and denormalizes [-1, 1] to [0, 1]. State-dict names are the
    VAE's own (`decoder.layers.0.weight` for TAESD).

    WebGPU builds at sizes whose decoder tensors exceed a storage binding replace an
    AutoencoderKL's `decoder` with wsd.compiler.split.BandedDecoder (same weights, same
    names): the same image, its high-resolution stages in row bands."""

    def __init__(self, vae):
        super().__init__()
        # Only the decoding half: the encoder's weights must not become inputs.
        self.post_quant_conv = getattr(vae, "post_quant_conv", None)
        self.decoder = vae.decoder
        self.scaling_factor = float(vae.config.scaling_factor)

    def forward(self, latents):
        dtype = next(self.decoder.parameters()).dtype
        latents = (latents / self.scaling_factor).to(dtype)
        if self.post_quant_conv is not None:
            latents = self.post_quant_conv(latents)
        image = self.decoder(latents)
        return (image.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)


class VaeEncoder(torch.nn.Module):
    """RGB image (1, H, W, 3) in [0, 1] (the layout `decode` returns) -> the latent
    distribution's (mean, std), each (1, C, H/8, W/8) float32. As diffusers: the image
    processor's 2x - 1, the encoder, quant_conv, then DiagonalGaussianDistribution's
    std = exp(0.5 * clamp(logvar, -30, 20)). The host draws the sample and scales it.

    WebGPU builds at sizes whose encoder tensors exceed a storage binding replace `encoder`
    with wsd.compiler.split.BandedEncoder (same weights, same names): the same latents, its
    high-resolution stages in row bands."""

    def __init__(self, vae):
        super().__init__()
        # Only the encoding half: the decoder's weights must not become inputs.
        self.encoder = vae.encoder
        self.quant_conv = vae.quant_conv

    def forward(self, image):
        dtype = self.encoder.conv_in.weight.dtype
        pixels = (2.0 * image - 1.0).permute(0, 3, 1, 2).to(dtype)
        moments = self.encoder(pixels)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = torch.chunk(moments.float(), 2, dim=1)
        std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
        return mean, std


@dataclass
class Traced:
    """A Relax module, and for each function the weights it takes after its inputs."""

    mod: tvm.IRModule
    weight_names: dict[str, list[str]]  # function -> state-dict names, in parameter order
    num_inputs: dict[str, int]  # function -> number of runtime (non-weight) inputs
    modules: dict[str, torch.nn.Module]  # function -> the wrapped module (its weights)
    split: dict | None = None  # wsd.compiler.split's record, where a binding limit was given


def to_relax(module: torch.nn.Module, example_inputs: tuple,
             decompose: bool = False) -> tuple[relax.Function, list[str]]:
    """torch.export one module and import it as a Relax function with weights as inputs.

    Returns the function and the state-dict names of its weight parameters, in order.
    Without decomposition, SDPA stays one relax.nn.attention op instead of kernels with i8
    masks and -inf literals that WGSL cannot express. The CLIP text encoder (eager attention,
    no SDPA) needs decomposition instead: its raw graph has ops the importer lacks.
    """
    with torch.no_grad():
        program = torch.export.export(module.eval(), example_inputs)
    mod = from_exported_program(program, keep_params_as_input=True,
                                unwrap_unit_return_tuple=True, run_ep_decomposition=decompose,
                                custom_convert_map=CONVERTERS)
    mod, _ = detach_params(mod)
    func = mod["main"]
    names = [spec.target for spec in program.graph_signature.input_specs
             if spec.kind == torch.export.graph_signature.InputKind.PARAMETER]
    relax_names = [v.name for v in func.params[len(example_inputs):]]
    if relax_names != ["p_" + n.replace(".", "_") for n in names]:
        raise RuntimeError("Relax parameters do not follow the exported program's order")
    return func, names


def example_inputs(model: Model, height: int, width: int) -> dict[str, tuple]:
    """Example inputs of every traced function; shapes are the compiled shapes."""
    c, f = model.latent_channels, model.vae_scale_factor
    latents = torch.randn(1, c, height // f, width // f)
    t = torch.tensor([500.0])
    emb = torch.randn(1, model.max_tokens, model.text_hidden_size)
    ids = torch.zeros(1, model.max_tokens, dtype=torch.int32)
    scale = torch.tensor([settings.GUIDANCE_SCALE])
    image = torch.rand(1, height, width, 3)
    return {
        "encode_text": (ids,),
        "encode_image": (image,),
        "unet_guided": (latents, t, emb, emb.clone(), scale),
        "unet": (latents, t, emb, scale) if model.guidance_embedded else (latents, t, emb),
        "decode": (latents,),
        "decode_preview": (latents,),
    }


def functions(model: Model) -> tuple[str, ...]:
    """The model's compiled functions. A UNet with a guidance embedding is never run on a
    batch of two (diffusers guides it through the embedding alone): no unet_guided.
    encode_image (the VAE encoder) serves image-to-image, where the VAE is an AutoencoderKL
    (diffusers' img2img samples its latent distribution; a tiny autoencoder has none). A model
    with a preview VAE (--preview-vae) has `decode_preview` too."""
    encode = ("encode_image",) if model.vae_class == "AutoencoderKL" else ()
    preview = ("decode_preview",) if "preview_vae" in model.configs else ()
    if model.guidance_embedded:
        return ("encode_text", *encode, "unet", "decode", *preview)
    return ("encode_text", *encode, "unet_guided", "unet", "decode", *preview)


def denoiser(model: Model) -> str:
    """The function a denoising step calls at the model's default guidance."""
    return "unet" if model.guidance_embedded else "unet_guided"


DTYPES = {name: getattr(torch, name) for name in settings.DTYPES}


def wrap_modules(model: Model, names=None,
                 dtype: str = "float32") -> dict[str, torch.nn.Module]:
    """The PyTorch module behind each compiled function (default: all of the model's), in the
    compute dtype (the UNet is loaded once and shared by the guided and plain functions)."""
    names = functions(model) if names is None else names
    plain = EmbeddedGuidanceUNet if model.guidance_embedded else PlainUNet
    makers = {
        "encode_text": lambda: TextEncoder(model.text_encoder()),
        "unet_guided": lambda: GuidedUNet(unet()),
        "unet": lambda: plain(unet()),
        "encode_image": lambda: VaeEncoder(vae()),
        "decode": lambda: VaeDecoder(vae()),
        "decode_preview": lambda: VaeDecoder(model.preview_vae()),
    }
    cache = {}

    def unet():
        if "unet" not in cache:
            cache["unet"] = model.unet()
        return cache["unet"]

    def vae():  # loaded once for the encoder and the decoder
        if "vae" not in cache:
            cache["vae"] = model.vae()
        return cache["vae"]

    return {name: makers[name]().to(DTYPES[dtype]) for name in names}


def trace_model(model: Model, height: int, width: int, dtype: str = "float32",
                names=None, max_binding_bytes: int | None = None) -> Traced:
    """Trace the model's functions (default: all) into one IRModule. With `max_binding_bytes`
    (WebGPU builds: the storage-binding limit) the tensors that would exceed it are split
    exactly (wsd.compiler.split: the VAE decoder and encoder in row bands, the UNet's
    feed-forward in token chunks); Traced.split records what was split and why."""
    from wsd.compiler import split

    check_size(model, height, width)
    check_dtype(dtype)
    modules = wrap_modules(model, names, dtype)
    record = None
    if max_binding_bytes is not None:
        f = model.vae_scale_factor
        record = split.plan(modules, height // f, width // f, dtype, max_binding_bytes)
        split.apply(modules, record)
    inputs = example_inputs(model, height, width)
    mod = tvm.IRModule()
    weight_names, num_inputs = {}, {}
    for name, module in modules.items():
        func, weight_names[name] = to_relax(module, inputs[name],
                                            decompose=name == "encode_text")
        num_inputs[name] = len(inputs[name])
        # num_input: TVM's mark that the parameters after the inputs are weights, fixed
        # from call to call (CUDA graphs may capture kernels that read them)
        mod[name] = func.with_attr("global_symbol", name).with_attr("num_input",
                                                                    num_inputs[name])
    return Traced(mod, weight_names, num_inputs, modules, record)


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def resolve_size(model: Model, height: int | None, width: int | None) -> tuple[int, int]:
    """(height, width): the model's native size where not given; checked."""
    height = model.default_size[0] if height is None else height
    width = model.default_size[1] if width is None else width
    check_size(model, height, width)
    return height, width


def check_size(model: Model, height: int, width: int) -> None:
    step = model.vae_scale_factor
    for label, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0 or value % step:
            raise ValueError(f"{label} must be a positive multiple of {step}, got {value}")

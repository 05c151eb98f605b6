"""Per-layer numerical verification: every block of every model part against PyTorch.

The trust anchor of the compiler, in the spirit of Apple's ml-stable-diffusion conversion:
each converted submodule reports its PSNR against the fp32 PyTorch model, against an
explicit bar.

How one sweep works, per model part (CLIP text encoder, UNet, VAE decoder):

1. Reference pass. The fp32 PyTorch part runs once on inputs like the runtime's, through the
   same wrappers the compiler traces (`wsd.compiler.trace`): the token ids of a real prompt (from
   `model.tokenizer()`), random latents, a timestep, the text embeddings of the prompt and of
   the empty prompt (classifier-free guidance, batch 2). Forward hooks (with kwargs) record
   every block's real inputs and outputs.
2. Blocks are found generically by walking `named_modules()` with type checks on diffusers
   and transformers classes (`block_kind`), so `tiny`, `sd15` and user folders all work.
   A block the reference pass never calls (the VAE encoder, say) is not verified.
3. Export. Each block alone is wrapped (`BlockModule`: tensor args/kwargs become inputs,
   everything else is bound as a constant, outputs are flattened to a tuple of tensors) and
   imported with `wsd.compiler.trace.to_relax` (CLIP blocks decomposed, as `trace.py` does for the
   text encoder). For float16 the block is converted to half and its floating inputs cast to
   half (clamped to the half range: CLIP's causal mask holds float32's minimum).
4. Compile. All blocks of a part become functions of ONE IRModule, compiled with
   `wsd.compiler.pipeline.compile_module` once (one codegen and one link per part instead of one per
   block); if that fails, blocks are compiled one by one so that a failure is pinned to its
   block.
5. Run each block with its weights through `wsd.runtime.executor.Executor` and compare all its
   outputs (cast to float32) with the fp32 PyTorch outputs. Target 'webgpu-native' compiles
   as the browser bundle does and runs TVM's WGSL on a native WebGPU instead
   (`wsd.runtime.webgpu_native`); 'webgpu-native-subgroups' the same with the bundle's subgroup
   kernel set.

PSNR of a block, in dB, over all of its outputs taken together (N elements in total):

    peak = max |ref|,  RMSE = sqrt(sum (out - ref)^2 / N),  PSNR = 20 log10(peak / RMSE)

(RMSE == 0 gives +inf; any non-finite output gives -inf). A block passes when its PSNR is
at least the bar of its dtype: `FP32_BAR_DB` for float32, `FP16_BAR_DB` for float16 (whose
outputs are compared with the fp32 reference too).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
import tvm
from torch.utils import _pytree as pytree

from wsd import settings, targets
from wsd.compiler import pipeline as build
from wsd.compiler.trace import (DTYPES, EmbeddedGuidanceUNet, GuidedUNet, TextEncoder, VaeDecoder,
                                resolve_size, to_relax)
from wsd.models import Model
from wsd.runtime.executor import Executor

FP32_BAR_DB = 60.0
FP16_BAR_DB = 35.0
BARS = dict(zip(settings.DTYPES, (FP32_BAR_DB, FP16_BAR_DB)))

PARTS = ("clip", "unet", "vae")
SEED = 0
PROMPT = "a photograph of an astronaut riding a horse"
TIMESTEP = 500.0
GUIDANCE_SCALE = settings.GUIDANCE_SCALE
_HALF_MAX = float(torch.finfo(torch.float16).max)


@dataclass
class Row:
    """One verified block."""

    part: str  # clip, unet, vae
    block: str  # module path inside the part's PyTorch module
    kind: str  # resnet, attention, transformer, layer, ...
    dtype: str
    target: str
    psnr: float  # dB, over all outputs of the block
    max_abs_err: float
    passed: bool
    seconds: float  # export + run + this block's share of the part's compile
    error: str | None = None  # why the block could not be exported, compiled or run


@dataclass
class Block:
    """A block and what the reference pass recorded for it."""

    part: str
    path: str
    kind: str
    module: torch.nn.Module
    args: tuple  # as captured (tensors cloned, fp32)
    kwargs: dict
    reference: list[torch.Tensor] = field(default_factory=list)  # fp32 outputs, flattened


# ---- which modules are blocks --------------------------------------------------------------

def _classes():
    from diffusers.models import attention_processor, downsampling, embeddings, resnet, upsampling
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from diffusers.models.unets import unet_2d_blocks
    from transformers.models.clip import modeling_clip

    attention = [attention_processor.Attention]
    try:  # newer diffusers: attention classes share a mixin
        from diffusers.models.attention import AttentionModuleMixin
        attention.append(AttentionModuleMixin)
    except ImportError:
        pass
    return {
        "embeddings": (modeling_clip.CLIPTextEmbeddings,),
        "layer": (modeling_clip.CLIPEncoderLayer,),
        "timesteps": (embeddings.Timesteps,),
        "time-embedding": (embeddings.TimestepEmbedding,),
        "resnet": (resnet.ResnetBlock2D,),
        "transformer": (Transformer2DModel,),
        "attention": tuple(attention),
        "downsample": (downsampling.Downsample2D,),
        "upsample": (upsampling.Upsample2D,),
        "_blocks_module": unet_2d_blocks.__name__,
    }


# Plain layers, verified only where no enclosing block is (conv_in, conv_out, norms...).
_LEAVES = ((torch.nn.Conv2d, "conv"), (torch.nn.GroupNorm, "norm"), (torch.nn.LayerNorm, "norm"),
           (torch.nn.Linear, "linear"), (torch.nn.Embedding, "embedding"))


def block_kind(module: torch.nn.Module, classes=None) -> str | None:
    """The kind of a block module, or None when it is not a block by itself."""
    classes = classes or _classes()
    for kind, types in classes.items():
        if not kind.startswith("_") and isinstance(module, types):
            return kind
    if type(module).__module__ == classes["_blocks_module"]:  # diffusers' UNet/VAE blocks
        name = type(module).__name__
        for word, kind in (("Mid", "mid-block"), ("Down", "down-block"), ("Up", "up-block")):
            if word in name:
                return kind
    return None


def find_blocks(root: torch.nn.Module) -> list[tuple[str, str, torch.nn.Module]]:
    """(path, kind, module) of every block under root, in module-tree order: the block
    classes anywhere, plain layers (conv, norm, linear, embedding) outside any block."""
    classes = _classes()
    found, inside = [], []
    for path, module in root.named_modules():
        if not path:
            continue
        kind = block_kind(module, classes)
        if kind is not None:
            found.append((path, kind, module))
            inside.append(path + ".")
            continue
        if any(path.startswith(prefix) for prefix in inside):
            continue
        for types, leaf_kind in _LEAVES:
            if isinstance(module, types):
                found.append((path, leaf_kind, module))
                break
    return found


# ---- reference pass ------------------------------------------------------------------------

def seed_everything(seed: int = SEED) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _clone(tree):
    return pytree.tree_map(lambda x: x.detach().clone() if isinstance(x, torch.Tensor) else x,
                           tree)


def _tensors(tree) -> list[torch.Tensor]:
    return [x for x in pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]


def _record(part: str, root: torch.nn.Module, run: Callable[[], object],
            select=None) -> list[Block]:
    """Run `run()` once with hooks on every block of root; the blocks it called, in the
    order their calls began (first call of each)."""
    blocks: dict[int, Block] = {}
    handles = []
    candidates = [(p, k, m) for p, k, m in find_blocks(root)
                  if select is None or select(part, p, k)]
    for path, kind, module in candidates:
        def pre_hook(mod, args, kwargs, path=path, kind=kind):
            if id(mod) not in blocks:
                blocks[id(mod)] = Block(part, path, kind, mod, _clone(args), _clone(kwargs))

        def hook(mod, args, kwargs, output):
            block = blocks.get(id(mod))
            if block is not None and not block.reference:
                block.reference = [t.detach().float().clone() for t in _tensors(output)]

        handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return list(blocks.values())


def _token_ids(tokenizer, prompt: str) -> torch.Tensor:
    ids = np.asarray(tokenizer(prompt)).reshape(1, -1).astype(np.int32)
    return torch.from_numpy(ids)


def capture(model: Model, parts: Iterable[str] = PARTS, height: int | None = None,
            width: int | None = None, blocks=None):
    """The reference pass, one part at a time: yields (part, its fp32 PyTorch module, its
    blocks with their captured inputs and outputs), in the order of `parts`. `blocks`
    filters them (see `verify_layers`). Seeded: the same inputs every time.

    A generator, so that a caller that drops each part before asking for the next never
    holds two models (nor their activations) at once."""
    height, width = resolve_size(model, height, width)
    parts = tuple(parts)
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown model parts {sorted(unknown)}; choose from {PARTS}")
    select = _selector(blocks)
    seed_everything()
    generator = torch.Generator().manual_seed(SEED)
    c, f = model.latent_channels, model.vae_scale_factor
    latents = torch.randn(1, c, height // f, width // f, generator=generator)
    embeddings = {}  # the UNet's text conditioning, from the fp32 text encoder

    def text_encoder_pass(record: bool):
        text_encoder = model.text_encoder()
        encode = TextEncoder(text_encoder).eval()
        tokenizer = model.tokenizer()
        cond_ids, uncond_ids = _token_ids(tokenizer, PROMPT), _token_ids(tokenizer, "")
        found = []
        if record:
            found = _record("clip", text_encoder, lambda: encode(cond_ids), select)
        with torch.no_grad():
            embeddings["cond"], embeddings["uncond"] = encode(cond_ids), encode(uncond_ids)
        return text_encoder, found

    for part in parts:
        if part == "clip":
            yield ("clip", *text_encoder_pass(record=True))
        elif part == "unet":
            if not embeddings:
                text_encoder_pass(record=False)
            unet = model.unet()
            t = torch.tensor([TIMESTEP])
            scale = torch.tensor([GUIDANCE_SCALE])
            if model.guidance_embedded:  # the scale's embedding goes through cond_proj
                guided = EmbeddedGuidanceUNet(unet).eval()
                found = _record("unet", unet, lambda: guided(
                    latents, t, embeddings["cond"], scale), select)
            else:
                guided = GuidedUNet(unet).eval()
                found = _record("unet", unet, lambda: guided(
                    latents, t, embeddings["cond"], embeddings["uncond"], scale), select)
            del guided
            yield "unet", unet, found
            del unet, found
        else:
            decoder = VaeDecoder(model.vae()).eval()
            found = _record("vae", decoder, lambda: decoder(latents), select)
            yield "vae", decoder, found
            del decoder, found


def _selector(blocks):
    """None (every block), a predicate (part, path, kind) -> bool, or names: each matches a
    block's path, 'part:path', its kind or 'part:kind'."""
    if blocks is None or callable(blocks):
        return blocks
    names = {blocks} if isinstance(blocks, str) else set(blocks)
    return lambda part, path, kind: bool(
        {path, f"{part}:{path}", kind, f"{part}:{kind}"} & names)


def one_per_kind(per_kind: int = 1):
    """A `blocks` predicate keeping the first `per_kind` blocks of each (part, kind) in
    module-tree order: a representative subset. Stateful: make a fresh one per sweep."""
    seen: dict[tuple[str, str], int] = {}

    def select(part, path, kind):
        n = seen.get((part, kind), 0)
        if n >= per_kind:
            return False
        seen[(part, kind)] = n + 1
        return True

    return select


# ---- export --------------------------------------------------------------------------------

class BlockModule(torch.nn.Module):
    """One block with its captured call: the tensors among its args/kwargs (nested tuples
    included) are the inputs, in order; everything else is bound as a constant. The outputs
    are flattened to a tuple of tensors."""

    def __init__(self, block: torch.nn.Module, args: tuple, kwargs: dict):
        super().__init__()
        self.block = block
        leaves, self._spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
        self._is_input = [isinstance(x, torch.Tensor) for x in leaves]
        self._constants = [None if is_in else x for x, is_in in zip(leaves, self._is_input)]
        self.example_inputs = tuple(x for x, is_in in zip(leaves, self._is_input) if is_in)

    def forward(self, *inputs):
        it = iter(inputs)
        leaves = [next(it) if is_in else const
                  for is_in, const in zip(self._is_input, self._constants)]
        args, kwargs = pytree.tree_unflatten(leaves, self._spec)
        return tuple(_tensors(self.block(*args, **kwargs)))


def cast_input(x: torch.Tensor, dtype: str) -> torch.Tensor:
    """Floating inputs in the compute dtype (clamped into half's range for float16)."""
    if not x.is_floating_point() or DTYPES[dtype] == x.dtype:
        return x
    if dtype == "float16":
        x = x.clamp(-_HALF_MAX, _HALF_MAX)
    return x.to(DTYPES[dtype])


@dataclass
class Exported:
    block: Block
    function: str | None  # name in the compiled module; None if the export failed
    relax_func: object
    inputs: list[np.ndarray]
    weights: list[np.ndarray]
    weight_names: list[str]  # state-dict names (of the BlockModule: "block.<path>")
    seconds: float
    error: str | None = None
    result: tuple[float, float] | None = None  # (PSNR, max abs error) once run


def export_block(block: Block, dtype: str, name: str) -> Exported:
    """Export one block (its module already in `dtype`) as the Relax function `name`."""
    start = time.time()
    args = pytree.tree_map(lambda x: cast_input(x, dtype) if isinstance(x, torch.Tensor) else x,
                           block.args)
    kwargs = pytree.tree_map(
        lambda x: cast_input(x, dtype) if isinstance(x, torch.Tensor) else x, block.kwargs)
    wrapper = BlockModule(block.module, args, kwargs).eval()
    inputs = [x.numpy() for x in wrapper.example_inputs]
    try:
        func, weight_names = to_relax(wrapper, wrapper.example_inputs,
                                      decompose=block.part == "clip")
    except Exception as err:  # noqa: BLE001 - reported as this block's failure
        return Exported(block, None, None, inputs, [], [], time.time() - start,
                        f"export failed: {type(err).__name__}: {err}")
    state = wrapper.state_dict()
    weights = [state[w].detach().cpu().numpy() for w in weight_names]
    return Exported(block, name, func.with_attr("global_symbol", name), inputs, weights,
                    weight_names, time.time() - start)


# ---- compile and run -----------------------------------------------------------------------

def _load(exported: list[Exported], target: tvm.target.Target):
    mod = tvm.IRModule({e.function: e.relax_func for e in exported})
    if target.kind.name == "webgpu":  # the browser build's kernels, run through wgpu-py
        from wsd.runtime import webgpu_native
        return webgpu_native.load(mod, target)
    return Executor(build.compile_module(mod, target).executable, targets.device_of(target))


def compile_blocks(exported: list[Exported], target: tvm.target.Target,
                   log=print) -> tuple[list[tuple[list[Exported], Executor]], float]:
    """Compile the exported blocks as one module and load it (one codegen, one link); if
    that fails, one module per block, and a block that does not compile gets its error.
    Returns [(blocks, executor)] and the seconds it took."""
    start = time.time()
    ready = [e for e in exported if e.error is None]
    if not ready:
        return [], 0.0
    try:
        groups = [(ready, _load(ready, target))]
    except Exception as err:  # noqa: BLE001
        log(f"  compiling all {len(ready)} blocks together failed ({type(err).__name__}); "
            "compiling one by one")
        groups = []
        for e in ready:
            try:
                groups.append(([e], _load([e], target)))
            except Exception as block_err:  # noqa: BLE001
                e.error = f"compile failed: {type(block_err).__name__}: {block_err}"
    return groups, time.time() - start


def run_block(executor: Executor, exported: Exported, inputs=None, weights=None) -> list[np.ndarray]:
    """Run a compiled block (optionally on other inputs or weights); float32 outputs."""
    inputs = exported.inputs if inputs is None else inputs
    weights = exported.weights if weights is None else weights
    result = executor(exported.function, *inputs, *weights)
    outputs = [result] if hasattr(result, "numpy") else list(result)  # a tensor or a tuple
    return [np.asarray(o.numpy(), dtype=np.float32) for o in outputs]


def psnr(outputs: list[np.ndarray], reference: list[np.ndarray]) -> tuple[float, float]:
    """(PSNR in dB, max abs error) of all outputs of a block against the reference."""
    if len(outputs) != len(reference):
        raise ValueError(f"{len(outputs)} outputs, reference has {len(reference)}")
    if not outputs:
        return math.inf, 0.0
    out = np.concatenate([np.asarray(o, np.float64).ravel() for o in outputs])
    ref = np.concatenate([np.asarray(r, np.float64).ravel() for r in reference])
    if out.shape != ref.shape:
        raise ValueError(f"output sizes differ: {out.shape} vs {ref.shape}")
    if out.size == 0:
        return math.inf, 0.0
    if not np.all(np.isfinite(out)):
        return -math.inf, math.inf
    diff = out - ref
    max_abs = float(np.max(np.abs(diff)))
    rmse = float(np.sqrt(np.mean(diff * diff)))
    if rmse == 0.0:
        return math.inf, max_abs
    peak = float(np.max(np.abs(ref)))
    return (20.0 * math.log10(peak / rmse) if peak > 0 else -math.inf), max_abs


def _shapes_match(outputs, reference) -> bool:
    return len(outputs) == len(reference) and all(
        tuple(o.shape) == tuple(r.shape) for o, r in zip(outputs, reference))


# ---- the sweep -----------------------------------------------------------------------------

def verify_layers(model: Model, target: str = "llvm", dtype: str = "float32",
                  height: int | None = None, width: int | None = None, log=print,
                  blocks=None, parts: Iterable[str] = PARTS) -> list[Row]:
    """Verify every block of every model part against fp32 PyTorch; one Row per block.

    `blocks` restricts the sweep: None (all), a predicate (part, path, kind) -> bool (see
    `one_per_kind`), or names, each matching a block's path, 'part:path', a kind or
    'part:kind'. `parts` restricts it to some of 'clip', 'unet', 'vae'.
    """
    if dtype not in BARS:
        raise ValueError(f"dtype must be one of {', '.join(BARS)}, got {dtype!r}")
    log = log or (lambda *_: None)
    targets.check(target, targets.names("verify"))
    if target in targets.WEBGPU_NATIVES:  # before minutes of capturing and compiling
        from wsd.runtime import webgpu_native

        webgpu_native.check_adapter(target)
    tvm_target = targets.make(target)
    height, width = resolve_size(model, height, width)
    bar = BARS[dtype]
    log(f"verifying {model.name} ({dtype}, {target}, {height}x{width}) against fp32 PyTorch, "
        f"bar {bar:g} dB")
    rows: list[Row] = []
    start = time.time()
    for part, root, found in capture(model, parts, height, width, blocks):
        if not found:
            start = time.time()
            continue
        if dtype != "float32":
            # After the fp32 reference pass (its inputs were cloned). nn.Module.to, as
            # diffusers' override only adds a warning about modules to keep in fp32 (none).
            torch.nn.Module.to(root, DTYPES[dtype])
        log(f"{part}: {len(found)} blocks captured ({time.time() - start:.1f} s); exporting ...")
        export_start = time.time()
        exported = [export_block(b, dtype, f"{part}_{i}") for i, b in enumerate(found)]
        log(f"{part}: exported in {time.time() - export_start:.1f} s; compiling "
            f"{sum(e.error is None for e in exported)} functions for {tvm_target.kind.name} ...")
        groups, compile_seconds = compile_blocks(exported, tvm_target, log)
        log(f"{part}: compiled in {compile_seconds:.1f} s; running ...")
        share = compile_seconds / max(1, sum(len(g) for g, _ in groups))
        for group, executor in groups:
            for e in group:
                run_start = time.time()
                try:
                    outputs = run_block(executor, e)
                except Exception as err:  # noqa: BLE001
                    e.error = f"run failed: {type(err).__name__}: {err}"
                    continue
                reference = [r.numpy() for r in e.block.reference]
                if not _shapes_match(outputs, reference):
                    e.error = ("output shapes differ: "
                               f"{[o.shape for o in outputs]} vs {[r.shape for r in reference]}")
                    continue
                value, max_abs = psnr(outputs, reference)
                e.seconds += share + time.time() - run_start
                e.result = (value, max_abs)
        for e in exported:
            b = e.block
            if e.error is None:
                value, max_abs = e.result
                row = Row(part, b.path, b.kind, dtype, target, value, max_abs, value >= bar,
                          e.seconds)
            else:
                row = Row(part, b.path, b.kind, dtype, target, -math.inf, math.inf, False,
                          e.seconds, e.error)
                log(f"  {b.path}: {e.error}")
            rows.append(row)
        passed = sum(r.passed for r in rows if r.part == part)
        log(f"{part}: {passed}/{len(exported)} pass ({time.time() - start:.1f} s)")
        del root, found, exported, groups
        start = time.time()
    return rows


class VerifyError(ValueError):
    """`wsd build --verify` refused: blocks of the model fail their bar on the build's target."""


def verify_build(model: Model, target: str, dtype: str, height: int | None = None,
                 width: int | None = None, log=print) -> list[Row]:
    """What `wsd build --verify` checks before it writes anything: every block on the build's
    own target (a webgpu bundle's kernels on WebGPU-native, as the browser would run them).
    Raises VerifyError naming the failing blocks; returns the rows when all pass."""
    check_on = targets.WEBGPU_NATIVE if target == targets.WEBGPU else target
    rows = verify_layers(model, check_on, dtype, height, width, log)
    failed = [r for r in rows if not r.passed]
    if failed:
        names = ", ".join(f"{r.part} {r.block} ({r.error or _db(r.psnr) + ' dB'})"
                          for r in failed)
        raise VerifyError(f"not building: {len(failed)} of {len(rows)} blocks fail on "
                          f"{check_on} ({dtype}, bar {BARS[dtype]:g} dB): {names}")
    return rows


def format_report(rows: list[Row]) -> str:
    """A fixed-width table of the rows and a summary line."""
    if not rows:
        return "no blocks verified"
    width = max(len(r.block) for r in rows)
    width = max(width, len("block"))
    head = (f"{'part':<5} {'block':<{width}} {'kind':<14} {'dtype':<8} {'PSNR dB':>8} "
            f"{'max abs err':>11} {'sec':>6}  result")
    lines = [head, "-" * len(head)]
    for r in rows:
        result = "PASS" if r.passed else "FAIL"
        if r.error:
            result += f"  ({r.error.splitlines()[0][:120]})"
        lines.append(f"{r.part:<5} {r.block:<{width}} {r.kind:<14} {r.dtype:<8} "
                     f"{_db(r.psnr):>8} {r.max_abs_err:>11.3e} {r.seconds:>6.2f}  {result}")
    lines.append("-" * len(head))
    dtypes = sorted({r.dtype for r in rows})
    bars = ", ".join(f"{d} >= {BARS[d]:g} dB" for d in dtypes)
    worst = min(rows, key=lambda r: r.psnr)
    failed = sum(not r.passed for r in rows)
    verdict = "all pass" if not failed else f"{failed} FAIL"
    lines.append(f"{len(rows)} blocks ({', '.join(sorted({r.target for r in rows}))}), "
                 f"min PSNR {_db(worst.psnr)} dB ({worst.part} {worst.block}), "
                 f"bar {bars}: {verdict}")
    return "\n".join(lines)


def _db(value: float) -> str:
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.1f}"

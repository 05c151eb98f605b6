"""Exact splitting of the tensors too large for one WebGPU storage binding.

WebGPU binds a buffer whole and guarantees 128 MiB per binding (256 MiB per buffer;
wsd.web.limits). Static memory planning gives every tensor a storage at least its size, so a
kernel that reads or writes a tensor over the limit needs an adapter that grants more. At
768x768 in float16 SD v1.5's VAE decoder holds 256 channels x 768 x 768 (288 MiB) and 512
channels x 384 x 384 (144 MiB), its encoder 128 channels x 768 x 768 (144 MiB; 256 MiB at
1024x1024); at 1024x1024 the UNet's feed-forward holds
2 x 16384 tokens x 2560 (GEGLU's projection, 160 MiB). Where a build gives a limit
(`wsd build --target webgpu`: wsd.web.bundle), `plan` chooses how to split those tensors so
that every tensor is under it, and `apply` makes the traced modules compute so. The result
is the unsplit model's up to float rounding: no tiling, no blending (diffusers'
`enable_tiling` would give another image).

VAE decoder (`BandedDecoder`): diffusers' AutoencoderKL decoder forward, unchanged up to the
first up block that holds a tensor over the limit; from its input on, every tensor is held as
row bands (a list of (N, C, rows, W) tensors), each under the limit, until the 3-channel
output, whose bands are concatenated:

    3x3 convolution        each band with `padding` rows of each neighbour (a halo; zeros
                           at the image's top and bottom), unpadded along rows
    1x1 convolution, SiLU, per band
    residual add
    nearest 2x upsample    per band: a band of r rows becomes 2r rows
    GroupNorm              sums and sums of squares per band in float32, added up over the
                           bands; mean and variance from them, applied per band (as
                           wsd.kernels.group_norm computes an unsplit group norm)

Bands are combined (the statistics' sums, the output's concatenation) at most FAN_IN at a
time, so that no fused kernel binds more than WebGPU's default 8 storage buffers.

VAE encoder (`BandedEncoder`): the other way round. The image is cut into row bands; conv_in
and every down block up to the last one that holds a tensor over the limit run on bands as
above (3x3 convolutions with halos, group norm from summed statistics, residual adds), and
each of their downsamplers (diffusers' Downsample2D: one zero row and column after the
input, then a 3x3 stride-2 convolution) per band: bands before the last start and end at even
rows, so band i's output rows are exactly those of its own rows, for which it reads one row
of band i + 1; the last band gets the zero row. So that every banded downsampler sees even
boundaries, bands are cut at multiples of 2^k image rows (k downsamplers banded); after the
last one a band may hold an odd number of rows. The bands are then concatenated (FAN_IN at a
time) and the rest (smaller blocks, the mid block, the output) runs as diffusers runs it.
The downsamplers' zero column is no tensor: wsd.compiler.layout.FoldPadIntoConv makes the
pad the convolution's padding.

A tiny autoencoder's decoder (AutoencoderTiny, TAESD: `--vae`, and `decode_preview` of
`--preview-vae`) is not split: `plan` records its largest tensor and, where that is over the
limit, why it stays whole (wsd.web.limits then reports the binding it needs).

UNet: diffusers' BasicTransformerBlock can run its feed-forward in token chunks
(`set_chunk_feed_forward`; the feed-forward acts on each token alone, so this is exact); the
blocks whose feed-forward holds a tensor over the limit get the fewest chunks that fit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

MiB = 1 << 20
METHOD = "exact"  # the issue's option (a); option (b) is diffusers' tiled decoding
WHY = ("exact splitting: the VAE decoder's and encoder's high-resolution stages run in row "
       "bands (conv halos, group-norm statistics summed over the bands) and the UNet's "
       "feed-forward in token "
       "chunks, so the image is diffusers' untiled image up to float rounding; tiled decoding "
       "would give diffusers' tiled image, which differs from it")


def _itemsize(dtype) -> int:
    return torch.empty((), dtype=getattr(torch, dtype) if isinstance(dtype, str)
                       else dtype).element_size()


# ---- the VAE decoder --------------------------------------------------------------------------

@dataclass
class DecoderPlan:
    """The decoder's split: up blocks first_block.. (and the output stage) in `bands` row
    bands, cut at `rows`, the band heights of up block first_block's input (None: unsplit)."""

    largest_bytes: int  # the unsplit decoder's largest activation (estimated from the modules)
    first_block: int | None = None
    bands: int = 1
    rows: list[int] = field(default_factory=list)
    band_bytes: int = 0  # the largest band tensor (halo rows included)
    unsupported: str | None = None  # why the decoder cannot be split, where it cannot


def _plain_resnet(resnet) -> bool:
    """A ResnetBlock2D without time embedding, up- or downsampling: what the banded resnet
    reproduces."""
    return (type(resnet).__name__ == "ResnetBlock2D" and resnet.upsample is None
            and resnet.downsample is None and resnet.time_emb_proj is None
            and resnet.time_embedding_norm in ("default", "group"))


def _unsupported(decoder) -> str | None:
    """Why `decoder` is not the kind BandedDecoder reproduces (None when it is)."""
    kinds = {type(block).__name__ for block in decoder.up_blocks}
    if kinds != {"UpDecoderBlock2D"}:
        return f"up blocks {sorted(kinds)} (only UpDecoderBlock2D is split)"
    if type(decoder.conv_norm_out).__name__ != "GroupNorm":
        return f"{type(decoder.conv_norm_out).__name__} output norm"
    for block in decoder.up_blocks:
        if not all(map(_plain_resnet, block.resnets)):
            return "resnets other than plain ResnetBlock2D"
        for up in block.upsamplers or []:
            if (not up.interpolate or not up.use_conv or up.use_conv_transpose
                    or up.norm is not None or up.name != "conv"):
                return "upsamplers other than nearest 2x + convolution"
    return None


def _up_stages(decoder, rows: int, cols: int):
    """Per up block: (input rows, input cols, [(channels, row factor)] of its tensors relative
    to its input rows), and the output stage last."""
    stages = []
    for block in decoder.up_blocks:
        c_in = block.resnets[0].conv1.in_channels
        c_out = block.resnets[-1].conv2.out_channels
        tensors = [(max(c_in, c_out), 1)]
        if block.upsamplers:
            tensors.append((c_out, 2))
        stages.append((rows, cols, tensors))
        if block.upsamplers:
            rows, cols = rows * 2, cols * 2
    stages.append((rows, cols, [(decoder.conv_norm_out.num_channels, 1)]))
    return stages


def _tiny_largest(decoder, rows: int, cols: int, size: int) -> int:
    """The largest activation of diffusers' DecoderTiny (a sequence of convolutions,
    activations, AutoencoderTinyBlocks and upsamples) on (rows, cols) latents."""
    largest, channels = 0, decoder.layers[0].in_channels
    for layer in decoder.layers:
        if isinstance(layer, torch.nn.Upsample):
            rows, cols = int(rows * layer.scale_factor), int(cols * layer.scale_factor)
        convs = [m for m in layer.modules() if isinstance(m, torch.nn.Conv2d)]
        if convs:
            channels = max(channels, *(c.out_channels for c in convs))
        largest = max(largest, channels * rows * cols * size)
        if convs:
            channels = convs[-1].out_channels
    return largest


def plan_decoder(decoder, latent_rows: int, latent_cols: int, dtype,
                 limit: int) -> DecoderPlan:
    """The fewest row bands that keep every tensor of the decoder's high-resolution stages
    at most `limit` bytes (a band count dividing the rows where one is near, so that bands
    share kernels). A tiny autoencoder's decoder is never split."""
    size = _itemsize(dtype)
    if not hasattr(decoder, "up_blocks"):  # AutoencoderTiny's DecoderTiny
        plan = DecoderPlan(largest_bytes=_tiny_largest(decoder, latent_rows, latent_cols, size))
        if plan.largest_bytes > limit:
            plan.unsupported = "a tiny autoencoder's decoder (AutoencoderTiny) is not split"
        return plan
    stages = _up_stages(decoder, latent_rows, latent_cols)
    largest = [max(c * r * f * cols * f * size for c, f in tensors)
               for r, cols, tensors in stages]
    plan = DecoderPlan(largest_bytes=max(largest))
    if plan.largest_bytes <= limit:
        return plan
    plan.unsupported = _unsupported(decoder)
    if plan.unsupported:
        return plan
    first = next(i for i, b in enumerate(largest) if b > limit)
    first = min(first, len(decoder.up_blocks) - 1)  # the output stage goes with the last block
    rows = stages[first][0]

    def band_bytes(band_rows: int) -> int:
        # a band of band_rows input rows is band_rows * 2^k rows k upsamples on, plus halos
        worst, scale = 0, 1
        for _, cols, tensors in stages[first:]:
            for c, f in tensors:
                worst = max(worst, c * (band_rows * scale * f + 2) * cols * f * size)
            scale *= max(f for _, f in tensors)
        return worst

    need = next((n for n in range(2, rows + 1) if band_bytes(-(-rows // n)) <= limit), None)
    if need is None:
        plan.unsupported = f"even one-row bands exceed {limit} bytes"
        return plan
    bands = next((n for n in range(need, 2 * need) if rows % n == 0), need)
    plan.first_block, plan.bands = first, bands
    plan.rows = [rows // bands + (1 if i < rows % bands else 0) for i in range(bands)]
    plan.band_bytes = band_bytes(plan.rows[0])
    return plan


# WebGPU's default maxStorageBuffersPerShaderStage is 8: a kernel reads at most 7 tensors
# besides the one it writes. Element-wise and injective work (adds, concatenation) over all
# bands would fuse into one kernel reading every band, so bands are combined at most
# FAN_IN at a time, with a kernel boundary between the rounds.
FAN_IN = 7


def _boundary(x: torch.Tensor) -> torch.Tensor:
    """x, through a kernel of its own: a sum over an axis of extent 1 is a reduction, and TVM
    fuses neither injective producers nor consumers into a reduction kernel's output side."""
    return x.unsqueeze(0).sum(0)


def _total(parts: list[torch.Tensor]) -> torch.Tensor:
    """The sum of the parts, FAN_IN at a time (stack: a kernel of its own; sum: a reduction)."""
    while len(parts) > 1:
        parts = [torch.stack(parts[i:i + FAN_IN]).sum(0) for i in range(0, len(parts), FAN_IN)]
    return parts[0]


def _gather(bands: list[torch.Tensor]) -> torch.Tensor:
    """The bands concatenated along rows, FAN_IN at a time."""
    while len(bands) > FAN_IN:
        bands = [_boundary(torch.cat(bands[i:i + FAN_IN], dim=2))
                 for i in range(0, len(bands), FAN_IN)]
    return torch.cat(bands, dim=2)


def _conv(conv: torch.nn.Conv2d, bands: list[torch.Tensor]) -> list[torch.Tensor]:
    """conv over the bands' concatenation, band by band (stride 1): each band with `pad`
    rows of its neighbours, zero rows at the image's edges."""
    pad, pad_w = conv.padding
    if pad == 0:
        return [conv(b) for b in bands]
    out = []
    for i, band in enumerate(bands):
        top = bands[i - 1][:, :, -pad:] if i > 0 else None
        bottom = bands[i + 1][:, :, :pad] if i + 1 < len(bands) else None
        x = torch.cat([p for p in (top, band, bottom) if p is not None], dim=2)
        if top is None or bottom is None:
            x = F.pad(x, (0, 0, pad if top is None else 0, pad if bottom is None else 0))
        out.append(F.conv2d(x, conv.weight, conv.bias, conv.stride, (0, pad_w),
                            conv.dilation, conv.groups))
    return out


def _group_norm(norm: torch.nn.GroupNorm, bands: list[torch.Tensor]) -> list[torch.Tensor]:
    """GroupNorm over the bands' concatenation: float32 sums over every band first."""
    n, c = bands[0].shape[:2]
    groups = norm.num_groups
    count = c // groups * sum(b.shape[2] * b.shape[3] for b in bands)
    sums = _total([b.float().sum(dim=(2, 3)) for b in bands])
    squares = _total([b.float().square().sum(dim=(2, 3)) for b in bands])
    mean = sums.reshape(n, groups, -1).sum(-1) / count
    var = squares.reshape(n, groups, -1).sum(-1) / count - mean * mean
    rstd = torch.rsqrt(var + norm.eps)

    def per_channel(stat):
        return stat[:, :, None].expand(n, groups, c // groups).reshape(n, c, 1, 1)

    scale, mean = per_channel(rstd), per_channel(mean)
    if norm.affine:
        scale = scale * norm.weight.float().reshape(1, c, 1, 1)
    out = []
    for b in bands:
        y = (b.float() - mean) * scale
        if norm.affine:
            y = y + norm.bias.float().reshape(1, c, 1, 1)
        out.append(y.to(b.dtype))
    return out


def _resnet(resnet, bands: list[torch.Tensor]) -> list[torch.Tensor]:
    """diffusers' ResnetBlock2D (no time embedding) on bands."""
    act = resnet.nonlinearity
    hidden = [act(b) for b in _group_norm(resnet.norm1, bands)]
    hidden = _conv(resnet.conv1, hidden)
    hidden = [act(b) for b in _group_norm(resnet.norm2, hidden)]
    hidden = _conv(resnet.conv2, [resnet.dropout(b) for b in hidden])
    shortcut = bands if resnet.conv_shortcut is None else _conv(resnet.conv_shortcut, bands)
    return [(s + h) / resnet.output_scale_factor for s, h in zip(shortcut, hidden)]


class BandedDecoder(torch.nn.Module):
    """diffusers' AutoencoderKL decoder (`decoder`, whose modules it shares under the same
    names, so the state dict is the decoder's) with up blocks plan.first_block.. and the
    output stage computed in row bands (see the module's docstring)."""

    def __init__(self, decoder, plan: DecoderPlan):
        super().__init__()
        assert plan.first_block is not None and not plan.unsupported
        self.conv_in = decoder.conv_in
        self.up_blocks = decoder.up_blocks
        self.mid_block = decoder.mid_block
        self.conv_norm_out = decoder.conv_norm_out
        self.conv_act = decoder.conv_act
        self.conv_out = decoder.conv_out
        self.plan = plan

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        sample = self.conv_in(sample)
        upscale_dtype = next(iter(self.up_blocks.parameters())).dtype
        sample = self.mid_block(sample, None).to(upscale_dtype)
        first = self.plan.first_block
        for block in self.up_blocks[:first]:
            sample = block(sample, None)
        if sample.shape[2] != sum(self.plan.rows):
            raise ValueError(f"planned for {sum(self.plan.rows)} rows, got {sample.shape[2]}")
        bands, start = [], 0
        for rows in self.plan.rows:
            bands.append(sample[:, :, start:start + rows])
            start += rows
        for block in self.up_blocks[first:]:
            for resnet in block.resnets:
                bands = _resnet(resnet, bands)
            for up in block.upsamplers or []:
                bands = [F.interpolate(b, scale_factor=2.0, mode="nearest") for b in bands]
                bands = _conv(up.conv, bands)
        bands = [self.conv_act(b) for b in _group_norm(self.conv_norm_out, bands)]
        return _gather(_conv(self.conv_out, bands))


# ---- the VAE encoder --------------------------------------------------------------------------

@dataclass
class EncoderPlan:
    """The encoder's split: conv_in and down blocks 0..last_block (its downsampler included)
    in `bands` row bands of the image, cut at `rows` (None: unsplit). Every band but the last
    starts and ends at a multiple of 2^k image rows, k the downsamplers among those blocks, so
    that each downsampler's output rows are those of whole bands."""

    largest_bytes: int  # the unsplit encoder's largest activation (estimated from the modules)
    last_block: int | None = None
    bands: int = 1
    rows: list[int] = field(default_factory=list)
    band_bytes: int = 0  # the largest band tensor (halo rows included)
    unsupported: str | None = None  # why the encoder cannot be split, where it cannot


def _encoder_unsupported(encoder) -> str | None:
    """Why `encoder` is not the kind BandedEncoder reproduces (None when it is)."""
    kinds = {type(block).__name__ for block in encoder.down_blocks}
    if kinds != {"DownEncoderBlock2D"}:
        return f"down blocks {sorted(kinds)} (only DownEncoderBlock2D is split)"
    for block in encoder.down_blocks:
        if not all(map(_plain_resnet, block.resnets)):
            return "resnets other than plain ResnetBlock2D"
        for down in block.downsamplers or []:
            conv = getattr(down, "conv", None)
            if (type(down).__name__ != "Downsample2D" or not down.use_conv
                    or down.norm is not None or not isinstance(conv, torch.nn.Conv2d)
                    or down.padding != 0 or conv.padding != (0, 0) or conv.stride != (2, 2)
                    or conv.kernel_size != (3, 3) or conv.dilation != (1, 1)):
                return "downsamplers other than pad (0, 1, 0, 1) + 3x3 stride-2 convolution"
    return None


def _down_stages(encoder, rows: int, cols: int):
    """Per down block: (input rows, input cols, [(channels, row halo)] of its tensors at its
    input's resolution: the resnets' widest with the 3x3 halo of two rows, the downsampler's
    input with its one row below), and the mid block and output stage last. conv_in's output
    is block 0's input. The downsampler's column of zeros is no tensor: FoldPadIntoConv
    (wsd.compiler.layout) makes the pad the convolution's padding."""
    stages = []
    for block in encoder.down_blocks:
        c_in = block.resnets[0].conv1.in_channels
        c_out = block.resnets[-1].conv2.out_channels
        tensors = [(max(c_in, c_out), 2)]
        if block.downsamplers:
            tensors.append((c_out, 1))
        stages.append((rows, cols, tensors))
        if block.downsamplers:
            rows, cols = rows // 2, cols // 2  # pad one after, 3x3, stride 2
    mid = max(encoder.conv_norm_out.num_channels, encoder.conv_out.out_channels)
    stages.append((rows, cols, [(mid, 2)]))
    return stages


def encoder_factor(encoder) -> int:
    """The image rows per latent row: 2 per downsampler."""
    return 2 ** sum(1 for block in encoder.down_blocks if block.downsamplers)


def plan_encoder(encoder, rows: int, cols: int, dtype, limit: int) -> EncoderPlan:
    """The fewest row bands that keep every tensor of the encoder's high-resolution stages
    (conv_in's output and the down blocks through the last one holding a tensor over `limit`
    bytes) at most `limit` bytes; `rows` x `cols` is the image's size. A band count dividing
    the rows where one is near, so that bands share kernels."""
    size = _itemsize(dtype)
    stages = _down_stages(encoder, rows, cols)
    largest = [max(c * r * w * size for c, _ in tensors) for r, w, tensors in stages]
    plan = EncoderPlan(largest_bytes=max(largest))
    if plan.largest_bytes <= limit:
        return plan
    plan.unsupported = _encoder_unsupported(encoder)
    if plan.unsupported:
        return plan
    if largest[-1] > limit:
        plan.unsupported = "the mid block (attention) holds a tensor over the limit"
        return plan
    last = max(i for i, b in enumerate(largest[:-1]) if b > limit)
    downs = sum(1 for block in encoder.down_blocks[:last + 1] if block.downsamplers)
    unit = 2 ** downs  # band boundaries at multiples of unit image rows
    units, rest = divmod(rows, unit)

    def cut(n: int) -> list[int]:
        out = [(units // n + (1 if i < units % n else 0)) * unit for i in range(n)]
        out[-1] += rest
        return out

    def band_bytes(band_rows: list[int]) -> int:
        worst = 0
        for r, (_, w, tensors) in zip(band_rows, stages[:last + 1]):
            worst = max(worst, max(c * (r + halo) * w * size for c, halo in tensors))
        return worst

    def scaled(band: int) -> list[int]:
        # a band's rows at each banded stage (the bottom band's may be one more than half)
        out = []
        for block in encoder.down_blocks[:last + 1]:
            out.append(band)
            if block.downsamplers:
                band //= 2
        return out

    def worst(n: int) -> int:
        return max(band_bytes(scaled(r)) for r in cut(n))

    need = next((n for n in range(2, units + 1) if worst(n) <= limit), None)
    if need is None:
        plan.unsupported = f"even bands of {unit} rows exceed {limit} bytes"
        return plan
    bands = next((n for n in range(need, 2 * need) if units % n == 0), need)
    plan.last_block, plan.bands, plan.rows = last, bands, cut(bands)
    plan.band_bytes = worst(bands)
    return plan


def _downsample(conv: torch.nn.Conv2d, bands: list[torch.Tensor]) -> list[torch.Tensor]:
    """diffusers' Downsample2D (pad one zero row and column after, 3x3 stride-2 convolution)
    over the bands' concatenation, band by band: every band but the last has even rows, so its
    output rows are those of its own input rows, and reads one row of the next band; the last
    band gets the zero row."""
    out = []
    for i, band in enumerate(bands):
        if i + 1 < len(bands):
            if band.shape[2] % 2:
                raise ValueError("a band before the last has an odd number of rows")
            x = F.pad(torch.cat([band, bands[i + 1][:, :, :1]], dim=2), (0, 1, 0, 0))
        else:
            x = F.pad(band, (0, 1, 0, 1))
        out.append(conv(x))
    return out


class BandedEncoder(torch.nn.Module):
    """diffusers' AutoencoderKL encoder (`encoder`, whose modules it shares under the same
    names, so the state dict is the encoder's) with conv_in and down blocks
    0..plan.last_block computed in row bands of the image, then the bands joined and the rest
    as diffusers computes it (see the module's docstring)."""

    def __init__(self, encoder, plan: EncoderPlan):
        super().__init__()
        assert plan.last_block is not None and not plan.unsupported
        self.conv_in = encoder.conv_in
        self.down_blocks = encoder.down_blocks
        self.mid_block = encoder.mid_block
        self.conv_norm_out = encoder.conv_norm_out
        self.conv_act = encoder.conv_act
        self.conv_out = encoder.conv_out
        self.plan = plan

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        if sample.shape[2] != sum(self.plan.rows):
            raise ValueError(f"planned for {sum(self.plan.rows)} rows, got {sample.shape[2]}")
        bands, start = [], 0
        for rows in self.plan.rows:
            bands.append(sample[:, :, start:start + rows])
            start += rows
        bands = _conv(self.conv_in, bands)
        last = self.plan.last_block
        for block in self.down_blocks[:last + 1]:
            for resnet in block.resnets:
                bands = _resnet(resnet, bands)
            for down in block.downsamplers or []:
                bands = _downsample(down.conv, bands)
        sample = _gather(bands)
        for block in self.down_blocks[last + 1:]:
            sample = block(sample)
        sample = self.mid_block(sample)
        sample = self.conv_act(self.conv_norm_out(sample))
        return self.conv_out(sample)


# ---- the UNet ---------------------------------------------------------------------------------

def _transformer_levels(unet):
    """(name, BasicTransformerBlock, level): level = how many times the latents were halved
    where the block runs (down block i: i; the mid block: the last; up block j: its mirror)."""
    levels = len(unet.down_blocks) - 1
    parts = [(f"down_blocks.{i}", b, i) for i, b in enumerate(unet.down_blocks)]
    parts.append(("mid_block", unet.mid_block, levels))
    parts += [(f"up_blocks.{j}", b, levels - j) for j, b in enumerate(unet.up_blocks)]
    for prefix, block, level in parts:
        for a, attention in enumerate(getattr(block, "attentions", None) or []):
            for t, tb in enumerate(getattr(attention, "transformer_blocks", None) or []):
                if hasattr(tb, "set_chunk_feed_forward"):
                    yield f"{prefix}.attentions.{a}.transformer_blocks.{t}", tb, level


def plan_unet(unet, latent_rows: int, latent_cols: int, batch: int, dtype,
              limit: int) -> dict[str, dict]:
    """{transformer block: {"tokens", "chunks", "bytes", "chunk_bytes"}} for the blocks whose
    feed-forward holds a tensor over `limit` bytes (its widest linear layer's output), with
    the fewest token chunks (dividing the tokens) that fit."""
    size, out = _itemsize(dtype), {}
    for name, block, level in _transformer_levels(unet):
        tokens = -(-latent_rows // 2 ** level) * -(-latent_cols // 2 ** level)
        width = max((m.out_features for m in block.ff.modules()
                     if isinstance(m, torch.nn.Linear)), default=0)
        nbytes = batch * tokens * width * size
        if nbytes <= limit:
            continue
        chunks = next(n for n in range(2, tokens + 1)
                      if tokens % n == 0 and nbytes // n <= limit)
        out[name] = {"tokens": tokens, "chunks": chunks, "bytes": nbytes,
                     "chunk_bytes": nbytes // chunks}
    return out


# ---- the choice -------------------------------------------------------------------------------

# The decoding functions: the VAE's, and the preview VAE's (`decode_preview`, recorded under
# its own key only where the model has one).
DECODERS = ("decode", "decode_preview")


def plan(modules: dict[str, torch.nn.Module], latent_rows: int, latent_cols: int, dtype: str,
         limit: int) -> dict:
    """The split for the traced modules (wsd.compiler.trace.wrap_modules' dict) under a
    binding limit of `limit` bytes. Where a weight is larger than `limit` the module needs a
    larger binding anyway, and tensors are split only down to the largest weight.

    Returns the record for wsd-config.json: {"method", "why", "limit_bytes",
    "max_weight_bytes", "split_limit_bytes", "decode": DecoderPlan as a dict or None,
    "encode": EncoderPlan as a dict or None, "unet": {block: chunks}}."""
    max_weight = max((p.numel() * p.element_size() for m in modules.values()
                      for p in m.parameters()), default=0)
    effective = max(limit, max_weight)
    record = {"method": METHOD, "why": WHY, "limit_bytes": limit,
              "max_weight_bytes": max_weight, "split_limit_bytes": effective,
              "decode": None, "encode": None, "unet": {}}
    if "encode_image" in modules:
        encoder = modules["encode_image"].encoder
        f = encoder_factor(encoder)
        record["encode"] = asdict(plan_encoder(encoder, latent_rows * f, latent_cols * f,
                                               dtype, effective))
    for name in DECODERS:
        if name in modules:
            record[name] = asdict(plan_decoder(modules[name].decoder, latent_rows,
                                               latent_cols, dtype, effective))
    unets = [m for name, m in modules.items() if name in ("unet_guided", "unet")]
    if unets:
        batch = 2 if "unet_guided" in modules else 1
        record["unet"] = plan_unet(unets[0].unet, latent_rows, latent_cols, batch, dtype,
                                   effective)
    return record


def apply(modules: dict[str, torch.nn.Module], record: dict) -> None:
    """Make the traced modules compute as `record` (from `plan`) says."""
    encode = record.get("encode")
    if encode and encode["last_block"] is not None:
        wrapper = modules["encode_image"]
        wrapper.encoder = BandedEncoder(wrapper.encoder, EncoderPlan(**encode))
    for name in DECODERS:
        decode = record.get(name)
        if decode and decode["first_block"] is not None:
            wrapper = modules[name]
            wrapper.decoder = BandedDecoder(wrapper.decoder, DecoderPlan(**decode))
    if record.get("unet"):
        unet = next(m.unet for name, m in modules.items() if name in ("unet_guided", "unet"))
        blocks = {name: tb for name, tb, _ in _transformer_levels(unet)}
        for name, info in record["unet"].items():
            blocks[name].set_chunk_feed_forward(info["tokens"] // info["chunks"], dim=1)


def describe(record: dict) -> list[str]:
    """Log lines: what was split and why."""
    mib = lambda n: f"{n / MiB:.0f} MiB"  # noqa: E731
    limit = record["split_limit_bytes"]
    lines = []
    if record["split_limit_bytes"] > record["limit_bytes"]:
        lines.append(f"a weight of {mib(record['max_weight_bytes'])} needs a binding over "
                     f"{mib(record['limit_bytes'])} anyway: tensors split down to that size")
    decoders = [(name, record[name]) for name in DECODERS if record.get(name)]
    for name, decode in decoders:
        if decode["first_block"] is not None:
            lines.append(
                f"{name}: largest tensor {mib(decode['largest_bytes'])} > {mib(limit)}: up "
                f"blocks {decode['first_block']}.. and the output in {decode['bands']} row "
                f"bands (largest band tensor {mib(decode['band_bytes'])})")
        elif decode["unsupported"]:
            lines.append(f"{name}: largest tensor {mib(decode['largest_bytes'])} > "
                         f"{mib(limit)}, not split: {decode['unsupported']}")
        else:
            lines.append(f"{name}: largest tensor {mib(decode['largest_bytes'])} fits, "
                         f"unsplit")
    encode = record.get("encode")
    if encode:
        if encode["last_block"] is not None:
            lines.append(
                f"encode: largest tensor {mib(encode['largest_bytes'])} > {mib(limit)}: the "
                f"input and down blocks ..{encode['last_block']} in {encode['bands']} row "
                f"bands (largest band tensor {mib(encode['band_bytes'])})")
        elif encode["unsupported"]:
            lines.append(f"encode: largest tensor {mib(encode['largest_bytes'])} > "
                         f"{mib(limit)}, not split: {encode['unsupported']}")
        else:
            lines.append(f"encode: largest tensor {mib(encode['largest_bytes'])} fits, unsplit")
    for name, info in record.get("unet", {}).items():
        lines.append(f"unet: {name}'s feed-forward ({mib(info['bytes'])}) in {info['chunks']} "
                     f"token chunks")
    split = (any(d["first_block"] is not None for _, d in decoders)
             or (encode and encode["last_block"] is not None) or record.get("unet"))
    unsplit = [name for name, part in [*decoders, ("encoder", encode)]
               if part and part["unsupported"]]
    if split:
        head = f"splitting        {record['method']} ({record['why']})"
        if unsplit:
            head += f"; not possible for the {' and '.join(unsplit)}"
    elif unsplit:
        head = f"splitting        not possible for the {' and '.join(unsplit)}"
    else:
        head = f"splitting        none needed (every tensor fits {mib(limit)})"
    return [head] + ["                   " + line for line in lines]

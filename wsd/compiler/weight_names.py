"""How a compiled function's weights are named outside it: `<part>/<state-dict name>` in the
tensor cache (wsd.runtime.weights) and the memory plan (wsd.compiler.memory), so that the
guided and the plain UNet share theirs. No TVM or torch needed.
"""

from __future__ import annotations

# Compiled function -> (model part owning its weights, prefix of the part's module in the
# wrapper modules of wsd.compiler.trace). VaeEncoder and VaeDecoder hold the VAE's submodules
# directly; the preview VAE's weights are `preview_vae/...`, so they never clash with the VAE's.
FUNCTION_PARTS = {
    "encode_text": ("text_encoder", "text_encoder."),
    "unet_guided": ("unet", "unet."),
    "unet": ("unet", "unet."),
    "encode_image": ("vae", ""),  # VaeEncoder: encoder., quant_conv.
    "decode": ("vae", ""),
    "decode_preview": ("preview_vae", ""),
}


def tensor_name(function: str, weight: str) -> str:
    """The cache name of a function's weight (its wrapper-module state-dict name)."""
    if function not in FUNCTION_PARTS:
        raise ValueError(f"no weight naming for function {function!r}; "
                         f"known: {', '.join(FUNCTION_PARTS)}")
    part, prefix = FUNCTION_PARTS[function]
    if not weight.startswith(prefix):
        raise ValueError(f"weight {weight!r} of {function} does not start with {prefix!r}")
    return f"{part}/{weight[len(prefix):]}"

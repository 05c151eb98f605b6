"""Built-in model architectures, with deterministic random weights (wsd.models.random_weights).

Full size, each exactly its family's architecture and scheduler config, for performance work:

    sd15       Stable Diffusion v1.5 (runwayml/stable-diffusion-v1-5), 512x512, PNDM
    sd21       Stable Diffusion 2.1 (stabilityai/stable-diffusion-2-1), 768x768, DDIM with
               v-prediction; OpenCLIP ViT-H text encoder (23 layers, 1024 wide, gelu),
               per-level head counts, linear projections, upcast attention; pads with "!"
    sd-turbo   SD-Turbo (stabilityai/sd-turbo: SD 2.1-base's architecture), 512x512, Euler
               with trailing timesteps, epsilon
    lcm        an LCM-distilled SD v1.5 (SimianLuo/LCM_Dreamshaper_v7): the UNet takes the
               guidance scale as an embedding (time_cond_proj_dim 256), LCMScheduler

Small variants for the CPU tests keep every block type of their family and shrink widths and
depths so that a whole image takes seconds: `tiny` (SD v1.5), `tiny-sd2` (SD 2.x's text
encoder, attention and v-prediction), `tiny-turbo` (tiny-sd2's architecture, SD-Turbo's
scheduler), `tiny-lcm` (tiny with a guidance embedding, LCMScheduler).

VAE presets (`VAE_PRESETS`, for `--vae` and `--preview-vae`; random weights too):

    taesd       the tiny autoencoder TAESD (madebyollin/taesd) as diffusers' AutoencoderTiny
                builds it by default: 64-wide blocks, no attention, no group norm
    tiny-taesd  the same with 16-wide blocks and one block per level, for the CPU tests

A preset may carry a "tokenizer" entry: the settings its family's tokenizer folder has
(SD 2.x pads with "!", not "<|endoftext|>").
"""

# The scheduler config shipped with SD v1.5 (scheduler/scheduler_config.json).
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

# SD 2.1's scheduler config: DDIM, v-prediction.
SD21_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
}

# SD-Turbo's: Euler with trailing timesteps (its 1 step starts at t=999).
SD_TURBO_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "trailing",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

# LCM_Dreamshaper_v7's.
LCM_SCHEDULER = {
    "_class_name": "LCMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "num_train_timesteps": 1000,
    "original_inference_steps": 50,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "thresholding": False,
    "timestep_scaling": 10.0,
    "timestep_spacing": "leading",
    "trained_betas": None,
}

SD15 = {
    "unet": {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                             "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                           "CrossAttnUpBlock2D"],
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "act_fn": "silu",
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "center_input_sample": False,
        "mid_block_scale_factor": 1,
    },
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "act_fn": "silu",
        "sample_size": 512,
        "scaling_factor": 0.18215,
    },
    "text_encoder": {
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 768,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    },
    "scheduler": SD15_SCHEDULER,
}

# tiny = SD v1.5 with smaller widths and depths; every other setting is SD v1.5's.
TINY = {
    "unet": {
        **SD15["unet"],
        "sample_size": 16,  # 16x16 latents -> 128x128 images
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "cross_attention_dim": 32,
        "attention_head_dim": 4,
        "norm_num_groups": 8,
    },
    "vae": {
        **SD15["vae"],
        "block_out_channels": [16, 16, 32, 32],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 128,
    },
    "text_encoder": {
        **SD15["text_encoder"],
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "projection_dim": 32,
    },
    "scheduler": SD15_SCHEDULER,
}

# SD 2.x: the UNet's transformers use linear projections and per-level head counts (the
# attention_head_dim list is heads per level, as diffusers reads it for SD 2.x); the text
# encoder is OpenCLIP ViT-H as transformers' CLIPTextModel (the folder keeps 23 of 24 layers).
SD2_UNET = {
    **SD15["unet"],
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
}
SD2_TEXT_ENCODER = {
    **SD15["text_encoder"],
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "hidden_act": "gelu",
    "projection_dim": 512,
}
SD2_TOKENIZER = {"pad_token": "!"}

SD21 = {
    "unet": {**SD2_UNET, "sample_size": 96, "upcast_attention": True},
    "vae": {**SD15["vae"], "sample_size": 768},
    "text_encoder": SD2_TEXT_ENCODER,
    "tokenizer": SD2_TOKENIZER,
    "scheduler": SD21_SCHEDULER,
}

SD_TURBO = {
    "unet": {**SD2_UNET, "sample_size": 64},
    "vae": SD15["vae"],
    "text_encoder": SD2_TEXT_ENCODER,
    "tokenizer": SD2_TOKENIZER,
    "scheduler": SD_TURBO_SCHEDULER,
}

LCM = {
    **SD15,
    "unet": {**SD15["unet"], "time_cond_proj_dim": 256},
    "scheduler": LCM_SCHEDULER,
}

TINY_SD2 = {
    "unet": {**TINY["unet"], "attention_head_dim": [2, 4], "cross_attention_dim": 48,
             "use_linear_projection": True, "upcast_attention": True},
    "vae": TINY["vae"],
    "text_encoder": {**TINY["text_encoder"], "hidden_size": 48, "intermediate_size": 96,
                     "num_attention_heads": 4, "hidden_act": "gelu", "projection_dim": 24},
    "tokenizer": SD2_TOKENIZER,
    "scheduler": SD21_SCHEDULER,
}

TINY_TURBO = {**TINY_SD2, "unet": {**TINY_SD2["unet"], "upcast_attention": False},
              "scheduler": SD_TURBO_SCHEDULER}

TINY_LCM = {
    **TINY,
    "unet": {**TINY["unet"], "time_cond_proj_dim": 16},
    "scheduler": LCM_SCHEDULER,
}

# diffusers' AutoencoderTiny defaults (madebyollin/taesd's config.json spells out the same).
TAESD = {
    "_class_name": "AutoencoderTiny",
    "in_channels": 3,
    "out_channels": 3,
    "encoder_block_out_channels": [64, 64, 64, 64],
    "decoder_block_out_channels": [64, 64, 64, 64],
    "act_fn": "relu",
    "upsample_fn": "nearest",
    "latent_channels": 4,
    "upsampling_scaling_factor": 2,
    "num_encoder_blocks": [1, 3, 3, 3],
    "num_decoder_blocks": [3, 3, 3, 1],
    "latent_magnitude": 3,
    "latent_shift": 0.5,
    "force_upcast": False,
    "scaling_factor": 1.0,
    "shift_factor": 0.0,
}

# TAESD with 16-wide blocks, one per level: still 8x upsampling, 4 latent channels.
TINY_TAESD = {
    **TAESD,
    "encoder_block_out_channels": [16, 16, 16, 16],
    "decoder_block_out_channels": [16, 16, 16, 16],
    "num_encoder_blocks": [1, 1, 1, 1],
    "num_decoder_blocks": [1, 1, 1, 1],
}

VAE_PRESETS = {"taesd": TAESD, "tiny-taesd": TINY_TAESD}

PRESETS = {"tiny": TINY, "sd15": SD15, "sd21": SD21, "sd-turbo": SD_TURBO, "lcm": LCM,
           "tiny-sd2": TINY_SD2, "tiny-turbo": TINY_TURBO, "tiny-lcm": TINY_LCM}

"""Test inputs shared by the Python suites and their JavaScript counterparts (tests/web)."""

from wsd.models.presets import LCM_SCHEDULER, SD21_SCHEDULER, SD_TURBO_SCHEDULER
from wsd.models.presets import SD15_SCHEDULER as SD15

# The real scheduler configs (wsd/models/presets.py: the families' scheduler_config.json).
# LCM-LoRA on SD v1.5 uses LCMScheduler.from_config of SD v1.5's PNDM config, SD15.
# name -> config, for the tests that run every sampler from every real config
REAL_SCHEDULER_CONFIGS = {"sd15": SD15, "sd21": SD21_SCHEDULER, "sd-turbo": SD_TURBO_SCHEDULER,
                          "lcm": LCM_SCHEDULER}

# Scheduler option variants beyond SD v1.5's config: (scheduler name, config).
SCHEDULER_VARIANTS = [
    ("ddim", {k: v for k, v in SD15.items() if k != "set_alpha_to_one"}),  # default: True
    ("pndm", {**SD15, "set_alpha_to_one": True}),
    ("dpm-solver++", {**SD15, "solver_order": 1}),
    ("dpm-solver++", {**SD15, "solver_type": "heun"}),
    ("dpm-solver++", {**SD15, "final_sigmas_type": "sigma_min"}),
    ("dpm-solver++", {**SD15, "final_sigmas_type": "sigma_min", "lower_order_final": False}),
    ("dpm-solver++", {**SD15, "final_sigmas_type": "sigma_min", "euler_at_final": True}),
    ("euler", {**SD15, "final_sigmas_type": "sigma_min"}),
    ("euler", {**SD15, "timestep_type": "continuous"}),  # no effect with epsilon
    ("euler-a", {"beta_schedule": "squaredcos_cap_v2"}),
    ("pndm", {"skip_prk_steps": True, "beta_schedule": "linear"}),
    ("dpm-solver++", {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing"}),
    ("lcm", LCM_SCHEDULER),
    ("lcm", {**LCM_SCHEDULER, "original_inference_steps": 25}),
    ("lcm", {**LCM_SCHEDULER, "prediction_type": "sample"}),
    ("lcm", {**LCM_SCHEDULER, "timestep_scaling": 3.7, "set_alpha_to_one": False}),
    ("lcm", {"beta_schedule": "linear", "num_train_timesteps": 500,
             "original_inference_steps": 30}),
    ("lcm", {**SD21_SCHEDULER, "beta_schedule": "squaredcos_cap_v2"}),  # v-prediction
]

# Seeds whose first 1x4x64x64 latent contains one of the rare uniforms for which a single
# FMA of torch's AVX2 kernel changes the result (found by exhaustive search over all 2**24
# uniforms: the DP3 range-reduction FMA matters for only 3 of them, the first cos/sin
# polynomial FMAs for 7 / 45), or an extreme uniform: u1 = 1 (radius is -0; torch turns the
# -0 of radius*sin into +0), u1 = 2**-24 (largest radius), u2 = 0 (theta = 0).
RARE_CASE_SEEDS = {
    "dp3_fma": 376,
    "cos_p0_fma": 30,
    "sin_p0_fma": 297,
    "u1_one": 6399,
    "u1_min": 80,
    "theta_zero": 1233,
}

# Prompts whose CLIP token ids are checked against transformers (tests/unit/test_tokenizer.py)
# and, in the browser, web-tokenizers + the app against wsd.runtime.tokenizer (tests/web/test_browser.py).
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
LONG = ", ".join(["a highly detailed oil painting of a majestic castle on a hill at sunset"] * 8)

PROMPTS = [
    # plain English
    "a photo of a cat",
    "a photograph of an astronaut riding a horse",
    "A beautiful landscape with mountains and a lake, trending on artstation",
    "portrait of a woman, 4k, highly detailed, sharp focus, octane render",
    "cyberpunk city street at night with neon lights and rain",
    "an oil painting of a bowl of fruit in the style of Cezanne",
    "masterpiece, best quality, ultra-detailed, 8k wallpaper",
    "a corgi wearing sunglasses on the beach",
    # case
    "A PHOTO OF A DOG",
    "MiXeD CaSe PrOmPt WiTh CamelCaseWords",
    "iPhone macOS GitHub TensorFlow",
    # punctuation runs / brackets / weights
    "wow!!! really??? yes...",
    "((masterpiece)), [[blurry]], {sharp}, (cat:1.2)",
    "--ar 16:9 --v 5 ::: ;;; ,,, ---",
    "email@example.com https://example.com/a?b=c&d=e#frag",
    "C++ / C# / F#; `code` ~tilde~ ^caret^ |pipe|",
    "\"quoted\" 'single' `back`",
    "!",
    "! !! !!!",
    # numbers
    "1234567890",
    "3.14159 and 2,718 and -42 and 1e-5",
    "the year 1999 and 2024, 100% sure, $5.99",
    "4k 8K 1080p 60fps",
    # contractions
    "it's a dog's life, isn't it? we're here, they've gone, I'm fine, you'll see, he'd go",
    "IT'S DON'T WE'RE I'M YOU'LL HE'D THEY'VE",
    "rock'n'roll o'clock 'tis y'all",
    "'s 't 're 've 'm 'll 'd",
    "it’s a curly apostrophe",
    # emojis and symbols
    "a cute cat 🐱 with a hat 🎩",
    "👍🏽 thumbs up, family 👨‍👩‍👧‍👦, flag 🇯🇵",
    "♥ ★ ☆ © ® ™ € £ ¥ → ← ∞ ≈ ≠ ± ×",
    # accented letters / European scripts
    "café crème brûlée, naïve façade, Ångström",
    "Ærøskøbing, Straße, œuvre, ĳssel",
    "e\u0301 (combining acute) vs \u00e9 (precomposed)",
    "Ῥόδος ΟΔΟΣ Σίσυφος",
    "İstanbul, ǅemal, ﬁne ligature",
    # CJK / Cyrillic / Arabic / others
    "一只可爱的猫坐在窗台上",
    "富士山と桜、日本の風景",
    "고양이가 잔디밭에 앉아 있다",
    "Красивый закат над морем",
    "ПРИВЕТ МИР",
    "قطة جميلة في الحديقة",
    "שלום עולם",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "mixed 中文 and English 和 日本語",
    "ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ１２３",
    # whitespace
    "tabs\tand\nnewlines\r\nand   multiple    spaces",
    "   leading and trailing   ",
    "\u00a0non\u2003breaking\u3000spaces\u200b zero width",
    "\x1c\x1d\x1e\x1f unit separators",
    "\t\n",
    "",
    " ",
    # special tokens literally in text
    EOS,
    BOS,
    f"a cat{EOS}a dog",
    f"{BOS} a cat {EOS} {EOS}",
    "<|ENDOFTEXT|> and <|StartOfText|>",
    "!!<|STARTOFTEXT|>!!",
    "<|endoftext",
    "<|notatoken|>",
    # HTML entities / markup (transformers does NOT unescape them)
    "fish &amp; chips &lt;b&gt; &quot;bold&quot; &#39; &nbsp;",
    "<b>bold</b> <i>italic</i>",
    # long prompts (truncation)
    LONG,
    "word " * 200,
    "🙂" * 100,
    "antidisestablishmentarianism supercalifragilisticexpialidocious",
]

# Every (part, kind) of block the per-layer sweeps must find in the tiny model
# (tests/numerics/test_layers.py on llvm, test_webgpu_native.py on WebGPU).
TINY_BLOCK_KINDS = frozenset({
    ("clip", "embeddings"), ("clip", "layer"), ("clip", "norm"),
    ("unet", "timesteps"), ("unet", "time-embedding"), ("unet", "conv"), ("unet", "norm"),
    ("unet", "down-block"), ("unet", "mid-block"), ("unet", "up-block"),
    ("unet", "resnet"), ("unet", "transformer"), ("unet", "attention"),
    ("unet", "downsample"), ("unet", "upsample"),
    ("vae", "conv"), ("vae", "norm"), ("vae", "mid-block"), ("vae", "up-block"),
    ("vae", "resnet"), ("vae", "attention"), ("vae", "upsample"),
})

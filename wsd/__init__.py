"""wsd: Stable Diffusion compiled with Apache TVM for native targets and WebGPU."""

__version__ = "0.1.0"

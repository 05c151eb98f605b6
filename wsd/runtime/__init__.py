"""The native runtime: the library cache (library), the denoising loop (pipeline), calling
compiled functions (executor), the weights (weights), noise (rng), the tokenizer, and the
WebGPU-native runtime that runs the browser build's kernels through wgpu-py."""

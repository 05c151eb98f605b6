"""Kernel tuning: export candidates, time them (wgsl_bench on WebGPU, cuda_bench on CUDA),
admit the winners into the records (tune)."""

"""Our kernels: attention (the tiled flash kernel, the row kernel for WebGPU, the
tensor-core one for CUDA), group norm, and the GEMM schedule rules with their tuned records
(gemm/)."""

"""The compiler: PyTorch -> Relax (trace, trace_ops), the passes (optimize, layout,
schedule), the one Relax pipeline and compile entry (pipeline), and what the compiled module
needs (memory)."""

"""Benchmarks side by side with PyTorch (`wsd bench`, `pytest tests/perf`; results in
docs/PERF.md): options (what a run can be asked), device (timing on it), kernels (one
computation against its PyTorch twin), layers, fused, models (what is timed), report (tables),
suite (`wsd bench`), profile (per-kernel times). The names benchmarks and tests use, handed on:
"""

from wsd.bench.device import (Device, Peak, compile_policy, count_flops, measure,
                              measure_interleaved, measure_peak, strict_fp32, versions)
from wsd.bench.fused import FUSED_KINDS, FusedKernel, dominant, fused_kernels, kind_of, prepare_fused
from wsd.bench.kernels import (Prepared, compare_kernel, param_specs, random_arrays, rel_l2,
                               time_prepared, tolerance)
from wsd.bench.layers import layer_cases, prepare_layer
from wsd.bench.models import ModelBench, WebGPUModelBench
from wsd.bench.options import DTYPES, GB, PARTS, TARGETS, BenchError, PerfSettings, parse_list
from wsd.bench.report import (Report, Row, format_memory, format_rows, format_table, load_note,
                              slug, table_cells, write_outputs)
from wsd.bench.suite import run

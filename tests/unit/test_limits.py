"""wsd.web.limits: reading WGSL workgroup needs, kernels' global buffers, the pooled memory plan,
and the check against WebGPU's default limits."""

from tvm import te

from wsd.compiler import buffers
from wsd.web import limits

MiB = 1 << 20

WGSL = """// Function: small_kernel
//----------------------------------------
// Function: small_kernel
//----------------------------------------
enable f16;

@group(0) @binding(0) var<storage, read> a_ptr : array<f16>;
@group(0) @binding(1) var<storage, read_write> b_ptr : array<f16>;

var<workgroup> tile : array<f16, 1000>;
var<workgroup> small : array<f32, 5>;
@compute @workgroup_size(16, 8, 1)
fn small_kernel() {}

// Function: big_kernel
//----------------------------------------
@group(0) @binding(0) var<storage, read> x_ptr : array<f32>;
@group(0) @binding(1) var<storage, read> y_ptr : array<f32>;
@group(0) @binding(2) var<storage, read_write> z_ptr : array<f32>;
struct PODArgs {
  n: i32,
  packGridDimX: u32
}
@group(0) @binding(3) var<uniform> podArgs : PODArgs;

var<workgroup> red : array<vec4<f32>, 1200>;
@compute @workgroup_size(512, 1, 1)
fn big_kernel() {}
"""


def test_wgsl_kernels():
    kernels = limits.wgsl_kernels(WGSL)
    assert kernels == {
        # 2000 B and 20 B, each rounded up to 16 B as WebGPU counts them
        "small_kernel": {"workgroup_storage_bytes": 2000 + 32, "invocations": 128,
                         "storage_buffers": 2},
        "big_kernel": {"workgroup_storage_bytes": 1200 * 16, "invocations": 512,
                       "storage_buffers": 3},
    }


def test_global_intermediates():
    a = te.placeholder((64, 1024), "float16", name="a")
    b = te.compute((64, 1024), lambda i, j: a[i, j] * 2, name="b")  # kept in global memory
    c = te.compute((64, 1024), lambda i, j: b[i, j] + 1, name="c")
    func = te.create_prim_func([a, c])
    assert buffers.global_intermediates(func) == [("b", 64 * 1024 * 2)]
    assert buffers.global_intermediates(te.create_prim_func([a, b])) == []


def test_activation_pool():
    """The pool keeps, per page-rounded size, the most buffers any one function needs."""
    storages = {"a": {"sizes": [4096, 8000, 8192], "dynamic": 0},  # 8000 -> 8192
                "b": {"sizes": [8192, 100, 1], "dynamic": 0},  # 100, 1 -> 4096
                "step": {"sizes": [], "dynamic": 1}}
    assert limits.activation_pool_bytes(storages) == 2 * 4096 + 2 * 8192


def test_workspace_pool():
    """Kernels free their workspaces before returning, and the pool reuses and regrows its
    entries: it holds at most as many as one kernel has at once, the largest requested."""
    one_each = {"conv_a": [("rf", 10 * MiB)], "conv_b": [("rf", 40 * MiB)],
                "conv_c": [("rf", 3 * MiB + 1)]}
    assert limits.workspace_pool_bytes(one_each) == 40 * MiB  # not the 53 MiB sum
    two = dict(one_each, attention=[("s", 1 * MiB), ("t", 2 * MiB)])
    assert limits.workspace_pool_bytes(two) == 40 * MiB + 10 * MiB
    assert limits.workspace_pool_bytes({}) == 0
    assert limits.workspace_pool_bytes({"k": [("x", 100)]}) == limits.PAGE  # page-rounded


def test_requirements_and_check():
    storages = {"decode": {"sizes": [128 * MiB, 64 * MiB, 3 * MiB], "dynamic": 0},
                "unet": {"sizes": [40 * MiB, 40 * MiB], "dynamic": 0}}
    kernels = limits.wgsl_kernels(WGSL)
    req = limits.requirements(storages, {}, {"small_kernel": kernels["small_kernel"]},
                              max_weight_bytes=72 * MiB, weights_bytes=1600 * MiB,
                              io_bytes=16384)
    assert req["max_buffer_bytes"] == req["max_storage_binding_bytes"] == 128 * MiB
    assert req["activation_pool_bytes"] == (128 + 64 + 3 + 2 * 40) * MiB
    assert req["max_function_storage_bytes"] == 195 * MiB
    assert req["peak_memory_bytes"] == 1600 * MiB + req["activation_pool_bytes"]
    assert limits.check(req) == []  # exactly 128 MiB is allowed

    scratch = {"attention": [("T_batch_matmul_NT", 1 << 30)]}
    req = limits.requirements(storages, scratch, kernels, 72 * MiB, 1600 * MiB, 16384)
    assert req["max_buffer_bytes"] == req["max_intermediate_bytes"] == 1 << 30
    assert req["peak_memory_bytes"] == (1600 * MiB + req["activation_pool_bytes"]
                                        + req["workspace_pool_bytes"])
    over = limits.check(req)
    assert [line.split(" = ")[0] for line in over] == [
        "max_buffer_bytes", "max_storage_binding_bytes", "max_workgroup_storage_bytes",
        "max_invocations_per_workgroup"]
    assert any("not" not in line and "above the defaults" in line
               for line in limits.describe(req))

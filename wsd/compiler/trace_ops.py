"""Our converters for the PyTorch ops TVM 0.27's importer gets wrong in half precision.

The importer emits convolutions and matrix products with `out_dtype="float32"` whatever the
input dtype, so a float16 model fails to import (`R.add(<bias float16>, <float32>)`). Ours
keep float32 accumulation, which is what PyTorch does on GPUs and what keeps fp16 accurate,
then cast the product back to the input dtype before the bias is added. For float32 models
they emit the same graph as the importer.

Attention stays one `relax.nn.attention` in the model's dtype: our kernel (wsd.kernels.attention)
reads float16 and accumulates in float32. (TVM's own lowering computes in the input dtype, and
an fp16 softmax over thousands of terms fell to 31 dB on SD v1.5's 4096-token
self-attention; where our kernel does not apply, wsd.kernels.attention falls back to TVM's lowering
in float32.)
"""

from __future__ import annotations

from tvm import relax


def _product_in_input_dtype(importer, product: relax.Expr, dtype: str) -> relax.Var:
    product = importer.block_builder.emit(product)
    if dtype != "float32":
        product = importer.block_builder.emit(relax.op.astype(product, dtype))
    return product


def _add_bias(importer, value: relax.Var, bias, shape) -> relax.Var:
    if importer._is_no_bias(bias):
        return value
    return importer.block_builder.emit(relax.op.add(value, relax.op.reshape(bias, shape)))


def linear(node, importer) -> relax.Var:
    args = importer.retrieve_args(node)
    x, weight = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    dtype = str(x.ty.dtype)
    out = _product_in_input_dtype(
        importer, relax.op.linear(x, weight, None, out_dtype="float32"), dtype)
    return _add_bias(importer, out, bias, (-1,))


def addmm(node, importer) -> relax.Var:
    bias, x, weight = (importer.env[a] for a in node.args[:3])
    alpha = node.kwargs.get("alpha", 1)
    beta = node.kwargs.get("beta", 1)
    if alpha != 1 or beta != 1:
        raise NotImplementedError(f"addmm with alpha={alpha}, beta={beta}")
    dtype = str(x.ty.dtype)
    out = _product_in_input_dtype(
        importer, relax.op.matmul(x, weight, out_dtype="float32"), dtype)
    return importer.block_builder.emit(relax.op.add(out, bias))


def matmul(node, importer) -> relax.Var:
    """matmul, mm and bmm."""
    a, b = (importer.env[x] for x in node.args[:2])
    return _product_in_input_dtype(
        importer, relax.op.matmul(a, b, out_dtype="float32"), str(a.ty.dtype))


def conv2d(node, importer) -> relax.Var:
    args = importer.retrieve_args(node)
    x, weight = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    stride, padding, dilation, groups = (
        args[i] if len(args) > i else default
        for i, default in ((3, 1), (4, 0), (5, 1), (6, 1)))
    dtype = str(x.ty.dtype)
    conv = relax.op.nn.conv2d(x, weight, strides=stride, padding=padding, dilation=dilation,
                              groups=groups, data_layout="NCHW", kernel_layout="OIHW",
                              out_dtype="float32")
    out = _product_in_input_dtype(importer, conv, dtype)
    return _add_bias(importer, out, bias, (1, -1, 1, 1))


CONVERTERS = {
    "linear.default": linear,
    "addmm.default": addmm,
    "conv2d.default": conv2d,
    "matmul.default": matmul,
    "mm.default": matmul,
    "bmm.default": matmul,
}

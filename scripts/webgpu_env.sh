# Sourced by the GPU-machine scripts that run WGSL through wgpu-py on the GPU's Vulkan driver
# (device_wgsl_bench.sh, gpu_perf.sh webgpu). `webgpu_env` installs, from folders carried with
# the working tree (both in .git/info/exclude):
#   .gl/        the Vulkan/GL loader debs (see the device README: libvulkan1 libegl1 ...),
#               unpacked into /
#   .wgpuwhl/   cp312 wheels of wgpu, cffi, pycparser, rendercanvas, into /tmp/site (callers
#               put it on PYTHONPATH)
# and points the Vulkan loader at NVIDIA's driver (VK_DRIVER_FILES). Returns non-zero when an
# install fails.
webgpu_env() {
    local f
    for f in .gl/*.deb; do dpkg -x "$f" / || return 1; done
    ldconfig
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .wgpuwhl/*.whl || return 1
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
}

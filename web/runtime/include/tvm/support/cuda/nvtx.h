/*
 * wsd: project-written replacement for a header that the apache-tvm 0.27 wheel's runtime
 * sources include but the wheel does not ship.
 *
 * NVTX profiler ranges only mean something in CUDA builds; in the web runtime a range is
 * an object that does nothing.
 */
#ifndef WSD_TVM_SUPPORT_CUDA_NVTX_H_
#define WSD_TVM_SUPPORT_CUDA_NVTX_H_

#include <string>

namespace tvm {
namespace support {

/*! \brief Scoped profiler range (no-op: no NVTX in this build). */
class NVTXScopedRange {
 public:
  explicit NVTXScopedRange(const char* /*name*/) {}
  explicit NVTXScopedRange(const std::string& /*name*/) {}
  NVTXScopedRange(const NVTXScopedRange&) = delete;
  NVTXScopedRange& operator=(const NVTXScopedRange&) = delete;
};

}  // namespace support
}  // namespace tvm

#endif  // WSD_TVM_SUPPORT_CUDA_NVTX_H_

/*
 * wsd: project-written replacement for a header that the apache-tvm 0.27 wheel's runtime
 * sources include but the wheel does not ship.  Only what the web runtime build uses is here.
 */
#ifndef WSD_SRC_SUPPORT_UTILS_H_
#define WSD_SRC_SUPPORT_UTILS_H_

#include <string>

namespace tvm {
namespace support {

/*! \brief Whether `str` begins with `prefix`. */
inline bool StartsWith(const std::string& str, const std::string& prefix) {
  return str.size() >= prefix.size() && str.compare(0, prefix.size(), prefix) == 0;
}

/*! \brief Whether `str` ends with `suffix`. */
inline bool EndsWith(const std::string& str, const std::string& suffix) {
  return str.size() >= suffix.size() &&
         str.compare(str.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace support
}  // namespace tvm

#endif  // WSD_SRC_SUPPORT_UTILS_H_

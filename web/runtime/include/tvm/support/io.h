/*
 * wsd: project-written replacement for a header that the apache-tvm 0.27 wheel's runtime
 * sources include but the wheel does not ship.  Only what the web runtime build uses is here.
 *
 * tvm::support::Stream is an abstract byte sink/source.  Subclasses provide the two raw
 * virtual calls; the typed helpers (Write(value), Read(&value), WriteArray, ReadArray) go
 * through tvm::support::Serializer<T> (serializer.h), which fixes the on-disk layout:
 * little-endian scalars, uint64 element counts in front of strings and containers.
 */
#ifndef WSD_TVM_SUPPORT_IO_H_
#define WSD_TVM_SUPPORT_IO_H_

#include <cstddef>
#include <cstdint>

namespace tvm {
namespace support {

/*! \brief Byte layout of one C++ type; specialised in serializer.h. */
template <typename T>
struct Serializer;

/*! \brief Abstract binary stream. */
class Stream {
 public:
  virtual ~Stream() = default;
  /*! \brief Read up to `size` bytes into `ptr`; returns the number of bytes read. */
  virtual size_t Read(void* ptr, size_t size) = 0;
  /*! \brief Write `size` bytes from `ptr`; returns the number of bytes written. */
  virtual size_t Write(const void* ptr, size_t size) = 0;

  /*! \brief Serialize one value. */
  template <typename T>
  void Write(const T& value);
  /*! \brief Deserialize one value; false when the stream ran out or the data is malformed. */
  template <typename T>
  bool Read(T* out);
  /*! \brief Serialize `count` consecutive values (no length prefix). */
  template <typename T>
  void WriteArray(const T* data, size_t count);
  /*! \brief Deserialize `count` consecutive values (no length prefix). */
  template <typename T>
  bool ReadArray(T* data, size_t count);
};

}  // namespace support
}  // namespace tvm

#include "serializer.h"

namespace tvm {
namespace support {

template <typename T>
inline void Stream::Write(const T& value) {
  Serializer<T>::Write(this, value);
}

template <typename T>
inline bool Stream::Read(T* out) {
  return Serializer<T>::Read(this, out);
}

template <typename T>
inline void Stream::WriteArray(const T* data, size_t count) {
  if constexpr (serializer_detail::kIsScalar<T>) {
    serializer_detail::WriteScalars(this, data, count);  // one block
  } else {
    for (size_t i = 0; i < count; ++i) Serializer<T>::Write(this, data[i]);
  }
}

template <typename T>
inline bool Stream::ReadArray(T* data, size_t count) {
  if constexpr (serializer_detail::kIsScalar<T>) {
    return serializer_detail::ReadScalars(this, data, count);
  } else {
    for (size_t i = 0; i < count; ++i) {
      if (!Serializer<T>::Read(this, data + i)) return false;
    }
    return true;
  }
}

}  // namespace support
}  // namespace tvm

#endif  // WSD_TVM_SUPPORT_IO_H_

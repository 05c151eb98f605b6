/*
 * wsd: project-written replacement for a header that the apache-tvm 0.27 wheel's runtime
 * sources include but the wheel does not ship.  Only what the web runtime build uses is here.
 *
 * tvm::support::Serializer<T> gives the binary layout of T on a tvm::support::Stream:
 *   - arithmetic and enum values: their bytes, little endian;
 *   - DLDataType: code (u8), bits (u8), lanes (u16); DLDevice: type (i32), id (i32);
 *   - std::string / ffi::String: u64 byte count, then the bytes;
 *   - std::vector / ffi::Array: u64 element count, then the elements;
 *   - std::pair: first, then second;
 *   - std::map / std::unordered_map / ffi::Map: u64 entry count, then key, value per entry.
 * This is the layout TVM's compiler uses when it writes VM executables, device modules and
 * parameter blobs, so the runtime can read what the compiler wrote.
 * Runtime sources add their own specialisations (Serializer<runtime::FunctionInfo>, ...);
 * each has `enabled`, `Write(Stream*, const T&)` and `Read(Stream*, T*)`.
 */
#ifndef WSD_TVM_SUPPORT_SERIALIZER_H_
#define WSD_TVM_SUPPORT_SERIALIZER_H_

#include <dlpack/dlpack.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/endian.h>
#include <tvm/ffi/string.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "io.h"

namespace tvm {
namespace support {
namespace serializer_detail {

/*! \brief Types stored as their raw (little-endian) bytes. */
template <typename T>
constexpr bool kIsScalar = std::is_arithmetic<T>::value || std::is_enum<T>::value;

template <typename T>
inline void WriteScalars(Stream* strm, const T* data, size_t count) {
  static_assert(kIsScalar<T>, "not a scalar type");
  if (count == 0) return;
  if (TVM_FFI_IO_NO_ENDIAN_SWAP || sizeof(T) == 1) {
    strm->Write(static_cast<const void*>(data), sizeof(T) * count);
  } else {
    std::vector<T> tmp(data, data + count);
    ffi::ByteSwap(tmp.data(), sizeof(T), count);
    strm->Write(static_cast<const void*>(tmp.data()), sizeof(T) * count);
  }
}

template <typename T>
inline bool ReadScalars(Stream* strm, T* data, size_t count) {
  static_assert(kIsScalar<T>, "not a scalar type");
  if (count == 0) return true;
  size_t nbytes = sizeof(T) * count;
  if (strm->Read(static_cast<void*>(data), nbytes) != nbytes) return false;
  if (!TVM_FFI_IO_NO_ENDIAN_SWAP && sizeof(T) != 1) ffi::ByteSwap(data, sizeof(T), count);
  return true;
}

/*! \brief Read a u64 count; refuses counts the remaining address space cannot hold. */
inline bool ReadCount(Stream* strm, size_t* count) {
  uint64_t n;
  if (!ReadScalars(strm, &n, 1)) return false;
  if (n > static_cast<uint64_t>(SIZE_MAX)) return false;
  *count = static_cast<size_t>(n);
  return true;
}

inline void WriteCount(Stream* strm, size_t count) {
  uint64_t n = static_cast<uint64_t>(count);
  WriteScalars(strm, &n, 1);
}

}  // namespace serializer_detail

/*! \brief Generic case: scalars (arithmetic and enum types). */
template <typename T>
struct Serializer {
  static_assert(serializer_detail::kIsScalar<T>,
                "tvm::support::Serializer has no layout for this type");
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const T& value) {
    serializer_detail::WriteScalars(strm, &value, 1);
  }
  static bool Read(Stream* strm, T* out) { return serializer_detail::ReadScalars(strm, out, 1); }
};

template <>
struct Serializer<DLDataType> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const DLDataType& v) {
    strm->Write<uint8_t>(v.code);
    strm->Write<uint8_t>(v.bits);
    strm->Write<uint16_t>(v.lanes);
  }
  static bool Read(Stream* strm, DLDataType* out) {
    return strm->Read(&out->code) && strm->Read(&out->bits) && strm->Read(&out->lanes);
  }
};

template <>
struct Serializer<DLDevice> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const DLDevice& v) {
    strm->Write<int32_t>(static_cast<int32_t>(v.device_type));
    strm->Write<int32_t>(v.device_id);
  }
  static bool Read(Stream* strm, DLDevice* out) {
    int32_t type, id;
    if (!strm->Read(&type) || !strm->Read(&id)) return false;
    out->device_type = static_cast<DLDeviceType>(type);
    out->device_id = id;
    return true;
  }
};

template <>
struct Serializer<std::string> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::string& v) {
    serializer_detail::WriteCount(strm, v.size());
    if (!v.empty()) strm->Write(static_cast<const void*>(v.data()), v.size());
  }
  static bool Read(Stream* strm, std::string* out) {
    size_t n;
    if (!serializer_detail::ReadCount(strm, &n)) return false;
    out->resize(n);
    if (n == 0) return true;
    return strm->Read(static_cast<void*>(&(*out)[0]), n) == n;
  }
};

template <>
struct Serializer<ffi::String> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::String& v) {
    serializer_detail::WriteCount(strm, v.size());
    if (v.size() != 0) strm->Write(static_cast<const void*>(v.data()), v.size());
  }
  static bool Read(Stream* strm, ffi::String* out) {
    std::string tmp;
    if (!Serializer<std::string>::Read(strm, &tmp)) return false;
    *out = ffi::String(std::move(tmp));
    return true;
  }
};

template <typename A, typename B>
struct Serializer<std::pair<A, B>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::pair<A, B>& v) {
    Serializer<A>::Write(strm, v.first);
    Serializer<B>::Write(strm, v.second);
  }
  static bool Read(Stream* strm, std::pair<A, B>* out) {
    return Serializer<A>::Read(strm, &out->first) && Serializer<B>::Read(strm, &out->second);
  }
};

template <typename T, typename Alloc>
struct Serializer<std::vector<T, Alloc>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::vector<T, Alloc>& v) {
    serializer_detail::WriteCount(strm, v.size());
    strm->WriteArray(v.data(), v.size());
  }
  static bool Read(Stream* strm, std::vector<T, Alloc>* out) {
    size_t n;
    if (!serializer_detail::ReadCount(strm, &n)) return false;
    out->clear();
    out->resize(n);
    return strm->ReadArray(out->data(), n);
  }
};

template <typename T>
struct Serializer<ffi::Array<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::Array<T>& v) {
    serializer_detail::WriteCount(strm, v.size());
    for (const T& elem : v) Serializer<T>::Write(strm, elem);
  }
  static bool Read(Stream* strm, ffi::Array<T>* out) {
    size_t n;
    if (!serializer_detail::ReadCount(strm, &n)) return false;
    std::vector<T> elems;
    elems.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      T elem{};
      if (!Serializer<T>::Read(strm, &elem)) return false;
      elems.push_back(std::move(elem));
    }
    *out = ffi::Array<T>(elems.begin(), elems.end());
    return true;
  }
};

namespace serializer_detail {
/*! \brief Shared code of the associative containers: count, then key/value per entry. */
template <typename M, typename K, typename V>
struct MapSerializer {
  static void Write(Stream* strm, const M& m) {
    WriteCount(strm, m.size());
    for (const auto& kv : m) {
      Serializer<K>::Write(strm, kv.first);
      Serializer<V>::Write(strm, kv.second);
    }
  }
  template <typename Insert>
  static bool Read(Stream* strm, Insert insert) {
    size_t n;
    if (!ReadCount(strm, &n)) return false;
    for (size_t i = 0; i < n; ++i) {
      K key{};
      V value{};
      if (!Serializer<K>::Read(strm, &key)) return false;
      if (!Serializer<V>::Read(strm, &value)) return false;
      insert(std::move(key), std::move(value));
    }
    return true;
  }
};
}  // namespace serializer_detail

namespace serializer_detail {
/*! \brief std::map and std::unordered_map: read into a cleared map with operator[]. */
template <typename M>
struct StdMapSerializer {
  using K = typename M::key_type;
  using V = typename M::mapped_type;
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const M& m) { MapSerializer<M, K, V>::Write(strm, m); }
  static bool Read(Stream* strm, M* out) {
    out->clear();
    return MapSerializer<M, K, V>::Read(
        strm, [out](K&& k, V&& v) { (*out)[std::move(k)] = std::move(v); });
  }
};
}  // namespace serializer_detail

template <typename K, typename V, typename Cmp, typename Alloc>
struct Serializer<std::map<K, V, Cmp, Alloc>>
    : serializer_detail::StdMapSerializer<std::map<K, V, Cmp, Alloc>> {};

template <typename K, typename V, typename H, typename Eq, typename Alloc>
struct Serializer<std::unordered_map<K, V, H, Eq, Alloc>>
    : serializer_detail::StdMapSerializer<std::unordered_map<K, V, H, Eq, Alloc>> {};

template <typename K, typename V>
struct Serializer<ffi::Map<K, V>> {
  using M = ffi::Map<K, V>;
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const M& m) {
    serializer_detail::MapSerializer<M, K, V>::Write(strm, m);
  }
  static bool Read(Stream* strm, M* out) {
    M result;
    bool ok = serializer_detail::MapSerializer<M, K, V>::Read(
        strm, [&result](K&& k, V&& v) { result.Set(std::move(k), std::move(v)); });
    if (ok) *out = std::move(result);
    return ok;
  }
};

}  // namespace support
}  // namespace tvm

#endif  // WSD_TVM_SUPPORT_SERIALIZER_H_

/*
 * wsd: project-written replacement for a header that the apache-tvm 0.27 wheel's runtime
 * sources include but the wheel does not ship.  Only what the web runtime build uses is here.
 *
 * Arena: bump allocator for short-lived trivially-destructible objects (RPC argument
 * buffers).  Memory is handed out from 64 KiB chunks (larger requests get a chunk of their
 * own) and stays valid until RecycleAll(), which keeps the first chunk for reuse and frees
 * the rest.
 */
#ifndef WSD_SRC_SUPPORT_ARENA_H_
#define WSD_SRC_SUPPORT_ARENA_H_

#include <tvm/ffi/error.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

namespace tvm {
namespace support {

class Arena {
 public:
  static constexpr size_t kChunkBytes = 64 * 1024;

  Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  /*! \brief Uninitialised storage for `count` objects of type T. */
  template <typename T>
  T* allocate_(int count = 1) {
    static_assert(std::is_trivially_destructible<T>::value, "Arena never runs destructors");
    TVM_FFI_ICHECK_GE(count, 0);
    return static_cast<T*>(Alloc(sizeof(T) * static_cast<size_t>(count), alignof(T)));
  }

  /*! \brief Raw storage of `size` bytes aligned to `align` (a power of two). */
  void* Alloc(size_t size, size_t align = alignof(std::max_align_t)) {
    if (size == 0) size = 1;
    if (!chunks_.empty()) {
      Chunk& c = chunks_.back();
      size_t offset = AlignUp(c.used, align, c.data.get());
      if (offset + size <= c.capacity) {
        c.used = offset + size;
        return c.data.get() + offset;
      }
    }
    size_t capacity = std::max(kChunkBytes, size + align);
    chunks_.push_back(Chunk{std::unique_ptr<char[]>(new char[capacity]), capacity, 0});
    Chunk& c = chunks_.back();
    size_t offset = AlignUp(0, align, c.data.get());
    c.used = offset + size;
    return c.data.get() + offset;
  }

  /*! \brief Invalidate everything handed out so far. */
  void RecycleAll() {
    if (chunks_.empty()) return;
    // keep one regular-sized chunk, drop the others
    Chunk keep = std::move(chunks_.front());
    chunks_.clear();
    if (keep.capacity == kChunkBytes) {
      keep.used = 0;
      chunks_.push_back(std::move(keep));
    }
  }

 private:
  struct Chunk {
    std::unique_ptr<char[]> data;
    size_t capacity;
    size_t used;
  };
  /*! \brief Smallest offset >= `offset` whose address in `base` is a multiple of `align`. */
  static size_t AlignUp(size_t offset, size_t align, const char* base) {
    uintptr_t addr = reinterpret_cast<uintptr_t>(base) + offset;
    uintptr_t aligned = (addr + align - 1) & ~static_cast<uintptr_t>(align - 1);
    return offset + static_cast<size_t>(aligned - addr);
  }

  std::vector<Chunk> chunks_;
};

}  // namespace support
}  // namespace tvm

#endif  // WSD_SRC_SUPPORT_ARENA_H_

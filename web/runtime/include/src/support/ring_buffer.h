/*
 * wsd: project-written replacement for a header that the apache-tvm 0.27 wheel's runtime
 * sources include but the wheel does not ship.  Only what the web runtime build uses is here.
 *
 * RingBuffer is the byte FIFO between the RPC endpoint and its channel.  This version keeps
 * the unread bytes in one contiguous window [head_, head_ + size_) of a growable buffer and
 * slides the window back to the start when the free tail is too short, so both callback
 * forms always see a single contiguous region.
 */
#ifndef WSD_SRC_SUPPORT_RING_BUFFER_H_
#define WSD_SRC_SUPPORT_RING_BUFFER_H_

#include <tvm/ffi/error.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace tvm {
namespace support {

class RingBuffer {
 public:
  /*! \brief Number of bytes written and not yet read. */
  size_t bytes_available() const { return size_; }

  /*! \brief Make room for at least `n` unread bytes without further allocation. */
  void Reserve(size_t n) {
    if (n > buf_.size()) Compact(n);
  }

  /*! \brief Append `size` bytes. */
  void Write(const void* data, size_t size) {
    if (size == 0) return;
    char* dst = WritableTail(size);
    std::memcpy(dst, data, size);
    size_ += size;
  }

  /*! \brief Remove `size` bytes from the front into `data`; they must be available. */
  void Read(void* data, size_t size) {
    TVM_FFI_ICHECK_LE(size, size_) << "RingBuffer: reading more bytes than available";
    if (size == 0) return;
    std::memcpy(data, buf_.data() + head_, size);
    Consume(size);
  }

  /*!
   * \brief Hand up to `max_nbytes` front bytes to `frecv(const void* data, size_t n)`, which
   *        returns how many it took; those are removed.  Returns that count.
   */
  template <typename FRecv>
  size_t ReadWithCallback(FRecv frecv, size_t max_nbytes) {
    size_t n = std::min(max_nbytes, size_);
    if (n == 0) return 0;
    size_t taken = frecv(static_cast<const void*>(buf_.data() + head_), n);
    TVM_FFI_ICHECK_LE(taken, n);
    Consume(taken);
    return taken;
  }

  /*!
   * \brief Let `fsend(void* data, size_t n)` fill up to `max_nbytes` bytes at the back; it
   *        returns how many it wrote.  Returns that count.
   */
  template <typename FSend>
  size_t WriteWithCallback(FSend fsend, size_t max_nbytes) {
    if (max_nbytes == 0) return 0;
    char* dst = WritableTail(max_nbytes);
    size_t written = fsend(static_cast<void*>(dst), max_nbytes);
    TVM_FFI_ICHECK_LE(written, max_nbytes);
    size_ += written;
    return written;
  }

 private:
  void Consume(size_t n) {
    head_ += n;
    size_ -= n;
    if (size_ == 0) head_ = 0;
  }
  /*! \brief Move unread bytes to offset 0, growing the buffer to hold `capacity` bytes. */
  void Compact(size_t capacity) {
    if (capacity > buf_.size()) {
      std::vector<char> grown(std::max(capacity, buf_.size() * 2));
      if (size_ != 0) std::memcpy(grown.data(), buf_.data() + head_, size_);
      buf_.swap(grown);
    } else if (head_ != 0 && size_ != 0) {
      std::memmove(buf_.data(), buf_.data() + head_, size_);
    }
    head_ = 0;
  }
  /*! \brief Pointer to `n` contiguous free bytes just after the unread ones. */
  char* WritableTail(size_t n) {
    if (head_ + size_ + n > buf_.size()) Compact(size_ + n);
    return buf_.data() + head_ + size_;
  }

  std::vector<char> buf_;
  size_t head_{0};
  size_t size_{0};
};

}  // namespace support
}  // namespace tvm

#endif  // WSD_SRC_SUPPORT_RING_BUFFER_H_

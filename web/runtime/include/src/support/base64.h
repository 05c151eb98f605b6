/*
 * wsd: project-written replacement for a header that the apache-tvm 0.27 wheel's runtime
 * sources include but the wheel does not ship.  Only what the web runtime build uses is here.
 *
 * Base64 (RFC 4648 alphabet, '=' padding) as stream adaptors: Base64OutStream encodes what
 * is written to it onto another stream (call Finish() at the end); Base64InStream decodes
 * another stream's text (call InitPosition() first; whitespace is skipped).
 */
#ifndef WSD_SRC_SUPPORT_BASE64_H_
#define WSD_SRC_SUPPORT_BASE64_H_

#include <tvm/ffi/error.h>
#include <tvm/support/io.h>

#include <cstdint>
#include <string>

namespace tvm {
namespace support {
namespace base64_detail {

inline char EncodeSextet(uint32_t v) {
  static const char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  return kAlphabet[v & 63];
}

/*! \return the 6-bit value of `c`, or -1 if `c` is not in the alphabet. */
inline int DecodeChar(int c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

inline bool IsSpace(int c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

}  // namespace base64_detail

/*! \brief Encodes bytes written to it as base64 text on `out`. */
class Base64OutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64OutStream(Stream* out) : out_(out) {}

  size_t Write(const void* ptr, size_t size) final {
    const uint8_t* p = static_cast<const uint8_t*>(ptr);
    for (size_t i = 0; i < size; ++i) {
      group_ = (group_ << 8) | p[i];
      if (++group_len_ == 3) {
        EmitGroup();
      }
    }
    if (text_.size() >= kFlushBytes) Flush();
    return size;
  }
  size_t Read(void*, size_t) final {
    TVM_FFI_THROW(InternalError) << "Base64OutStream is write-only";
    return 0;
  }

  /*! \brief Encode the last partial group with padding and push all text to `out`. */
  void Finish() {
    if (group_len_ == 1) {
      uint32_t v = group_ << 16;
      text_ += base64_detail::EncodeSextet(v >> 18);
      text_ += base64_detail::EncodeSextet(v >> 12);
      text_ += "==";
    } else if (group_len_ == 2) {
      uint32_t v = group_ << 8;
      text_ += base64_detail::EncodeSextet(v >> 18);
      text_ += base64_detail::EncodeSextet(v >> 12);
      text_ += base64_detail::EncodeSextet(v >> 6);
      text_ += '=';
    }
    group_ = 0;
    group_len_ = 0;
    Flush();
  }

 private:
  static constexpr size_t kFlushBytes = 4096;
  void EmitGroup() {
    text_ += base64_detail::EncodeSextet(group_ >> 18);
    text_ += base64_detail::EncodeSextet(group_ >> 12);
    text_ += base64_detail::EncodeSextet(group_ >> 6);
    text_ += base64_detail::EncodeSextet(group_);
    group_ = 0;
    group_len_ = 0;
  }
  void Flush() {
    if (!text_.empty()) out_->Write(static_cast<const void*>(text_.data()), text_.size());
    text_.clear();
  }

  Stream* out_;
  std::string text_;
  uint32_t group_{0};
  int group_len_{0};
};

/*! \brief Decodes base64 text read from `in`. */
class Base64InStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64InStream(Stream* in) : in_(in) {}

  /*! \brief Skip whitespace before the first base64 character. */
  void InitPosition() {
    int c;
    do {
      c = NextChar();
    } while (c != kEnd && base64_detail::IsSpace(c));
    pushed_back_ = c;
  }

  size_t Read(void* ptr, size_t size) final {
    uint8_t* out = static_cast<uint8_t*>(ptr);
    size_t n = 0;
    while (n < size) {
      if (pending_pos_ == pending_len_ && !DecodeGroup()) break;
      out[n++] = pending_[pending_pos_++];
    }
    return n;
  }
  size_t Write(const void*, size_t) final {
    TVM_FFI_THROW(InternalError) << "Base64InStream is read-only";
    return 0;
  }

 private:
  static constexpr int kEnd = -1;

  int NextChar() {
    if (pushed_back_ != kNone) {
      int c = pushed_back_;
      pushed_back_ = kNone;
      return c;
    }
    unsigned char c;
    return in_->Read(&c, 1) == 1 ? static_cast<int>(c) : kEnd;
  }
  int NextNonSpace() {
    int c;
    do {
      c = NextChar();
    } while (c != kEnd && base64_detail::IsSpace(c));
    return c;
  }
  /*! \brief Decode the next 4 characters into pending_; false at end of data. */
  bool DecodeGroup() {
    if (finished_) return false;
    uint32_t v = 0;
    int nchars = 0;
    for (int i = 0; i < 4; ++i) {
      int c = NextNonSpace();
      int d = (c == kEnd || c == '=') ? -1 : base64_detail::DecodeChar(c);
      if (d < 0) {
        TVM_FFI_ICHECK(c == kEnd || c == '=') << "Base64InStream: invalid character " << c;
        finished_ = true;
        break;
      }
      v = (v << 6) | static_cast<uint32_t>(d);
      ++nchars;
    }
    if (nchars < 4) v <<= 6 * (4 - nchars);
    pending_len_ = nchars == 0 ? 0 : static_cast<size_t>(nchars - 1);
    TVM_FFI_ICHECK(nchars != 1) << "Base64InStream: truncated group";
    pending_[0] = static_cast<uint8_t>(v >> 16);
    pending_[1] = static_cast<uint8_t>(v >> 8);
    pending_[2] = static_cast<uint8_t>(v);
    pending_pos_ = 0;
    return pending_len_ != 0;
  }

  static constexpr int kNone = -2;
  Stream* in_;
  int pushed_back_{kNone};
  bool finished_{false};
  uint8_t pending_[3] = {0, 0, 0};
  size_t pending_len_{0};
  size_t pending_pos_{0};
};

}  // namespace support
}  // namespace tvm

#endif  // WSD_SRC_SUPPORT_BASE64_H_

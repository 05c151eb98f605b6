/*
 * wsd: project-written replacement for a header that the apache-tvm 0.27 wheel's runtime
 * sources include but the wheel does not ship.
 *
 * Conversions between IEEE-754 binary formats, as templates over the storage types:
 *   __extendXfYf2__<SrcT, SrcRep, SrcSigBits, DstT, DstRep, DstSigBits>(a): narrow -> wide
 *     (exact), e.g. <uint16_t, uint16_t, 10, float, uint32_t, 23> turns half bits into float;
 *   __truncXfYf2__<SrcT, SrcRep, SrcSigBits, DstT, DstRep, DstSigBits>(a): wide -> narrow,
 *     rounding to nearest, ties to even; overflow gives infinity, NaN stays NaN (quiet).
 * SigBits counts the stored fraction bits; the exponent takes the remaining bits but one.
 * Subnormals, signed zeros and infinities are handled in both directions.
 */
#ifndef WSD_COMPILER_RT_BUILTIN_FP16_H_
#define WSD_COMPILER_RT_BUILTIN_FP16_H_

#include <cstdint>
#include <cstring>

namespace wsd_fp_detail {

template <typename Rep, int SigBits>
struct Format {
  static constexpr int kBits = static_cast<int>(sizeof(Rep) * 8);
  static constexpr int kExpBits = kBits - SigBits - 1;
  static constexpr uint64_t kSigMask = (uint64_t{1} << SigBits) - 1;
  static constexpr uint64_t kExpMax = (uint64_t{1} << kExpBits) - 1;
  static constexpr int64_t kBias = static_cast<int64_t>(kExpMax >> 1);
};

template <typename Rep, typename T>
inline uint64_t ToBits(T value) {
  static_assert(sizeof(Rep) == sizeof(T), "storage and representation sizes differ");
  Rep rep;
  std::memcpy(&rep, &value, sizeof(rep));
  return static_cast<uint64_t>(rep);
}

template <typename T, typename Rep>
inline T FromBits(uint64_t bits) {
  static_assert(sizeof(Rep) == sizeof(T), "storage and representation sizes differ");
  Rep rep = static_cast<Rep>(bits);
  T value;
  std::memcpy(&value, &rep, sizeof(value));
  return value;
}

/*! \brief value >> shift, rounded to nearest with ties to even (shift < 64). */
inline uint64_t ShiftRightRoundEven(uint64_t value, int shift) {
  if (shift <= 0) return value << (-shift);
  if (shift >= 64) return 0;
  uint64_t kept = value >> shift;
  uint64_t rest = value & ((uint64_t{1} << shift) - 1);
  uint64_t half = uint64_t{1} << (shift - 1);
  if (rest > half || (rest == half && (kept & 1))) ++kept;
  return kept;
}

}  // namespace wsd_fp_detail

template <typename SRC_T, typename SRC_REP_T, int SRC_SIG_BITS, typename DST_T,
          typename DST_REP_T, int DST_SIG_BITS>
static inline DST_T __extendXfYf2__(SRC_T a) {
  using S = wsd_fp_detail::Format<SRC_REP_T, SRC_SIG_BITS>;
  using D = wsd_fp_detail::Format<DST_REP_T, DST_SIG_BITS>;
  static_assert(DST_SIG_BITS >= SRC_SIG_BITS && D::kExpBits >= S::kExpBits, "not widening");
  const uint64_t bits = wsd_fp_detail::ToBits<SRC_REP_T>(a);
  const uint64_t sign = (bits >> (S::kBits - 1)) & 1;
  uint64_t exp = (bits >> SRC_SIG_BITS) & S::kExpMax;
  uint64_t sig = bits & S::kSigMask;
  uint64_t out_exp, out_sig;
  if (exp == S::kExpMax) {  // infinity or NaN
    out_exp = D::kExpMax;
    out_sig = sig << (DST_SIG_BITS - SRC_SIG_BITS);
  } else if (exp == 0 && sig == 0) {  // signed zero
    out_exp = 0;
    out_sig = 0;
  } else {
    int64_t e = static_cast<int64_t>(exp) - S::kBias;
    if (exp == 0) {  // subnormal: normalise so the leading one becomes the implicit bit
      e = 1 - S::kBias;
      while ((sig & (uint64_t{1} << SRC_SIG_BITS)) == 0) {
        sig <<= 1;
        --e;
      }
      sig &= S::kSigMask;
    }
    out_exp = static_cast<uint64_t>(e + D::kBias);
    out_sig = sig << (DST_SIG_BITS - SRC_SIG_BITS);
  }
  const uint64_t out = (sign << (D::kBits - 1)) | (out_exp << DST_SIG_BITS) | out_sig;
  return wsd_fp_detail::FromBits<DST_T, DST_REP_T>(out);
}

template <typename SRC_T, typename SRC_REP_T, int SRC_SIG_BITS, typename DST_T,
          typename DST_REP_T, int DST_SIG_BITS>
static inline DST_T __truncXfYf2__(SRC_T a) {
  using S = wsd_fp_detail::Format<SRC_REP_T, SRC_SIG_BITS>;
  using D = wsd_fp_detail::Format<DST_REP_T, DST_SIG_BITS>;
  static_assert(DST_SIG_BITS <= SRC_SIG_BITS && D::kExpBits <= S::kExpBits, "not narrowing");
  constexpr int kDrop = SRC_SIG_BITS - DST_SIG_BITS;
  const uint64_t bits = wsd_fp_detail::ToBits<SRC_REP_T>(a);
  const uint64_t sign = (bits >> (S::kBits - 1)) & 1;
  const uint64_t exp = (bits >> SRC_SIG_BITS) & S::kExpMax;
  const uint64_t sig = bits & S::kSigMask;
  uint64_t magnitude;  // destination bits without the sign
  if (exp == S::kExpMax) {
    if (sig == 0) {
      magnitude = D::kExpMax << DST_SIG_BITS;  // infinity
    } else {                                   // NaN: keep the top payload bits, force quiet
      uint64_t payload = (sig >> kDrop) | (uint64_t{1} << (DST_SIG_BITS - 1));
      magnitude = (D::kExpMax << DST_SIG_BITS) | (payload & D::kSigMask);
    }
  } else if (exp == 0 && sig == 0) {
    magnitude = 0;
  } else {
    // value = full * 2^(e - SRC_SIG_BITS), full has the implicit bit for normal inputs
    const int64_t e = exp == 0 ? 1 - S::kBias : static_cast<int64_t>(exp) - S::kBias;
    const uint64_t full = exp == 0 ? sig : (sig | (uint64_t{1} << SRC_SIG_BITS));
    const int64_t out_exp = e + D::kBias;
    if (out_exp >= static_cast<int64_t>(D::kExpMax)) {
      magnitude = D::kExpMax << DST_SIG_BITS;  // too large: infinity
    } else if (out_exp >= 1) {
      // normal result; a carry out of the rounding bumps the exponent (possibly to infinity)
      const uint64_t rounded = wsd_fp_detail::ShiftRightRoundEven(full, kDrop);
      magnitude = (static_cast<uint64_t>(out_exp) << DST_SIG_BITS) + rounded -
                  (uint64_t{1} << DST_SIG_BITS);
    } else {
      // subnormal result: exponent field 0, value = rounded * 2^(1 - bias - DST_SIG_BITS)
      const int64_t shift = static_cast<int64_t>(kDrop) + (1 - out_exp);
      magnitude =
          shift >= 64 ? 0 : wsd_fp_detail::ShiftRightRoundEven(full, static_cast<int>(shift));
    }
  }
  return wsd_fp_detail::FromBits<DST_T, DST_REP_T>((sign << (D::kBits - 1)) | magnitude);
}

#endif  // WSD_COMPILER_RT_BUILTIN_FP16_H_

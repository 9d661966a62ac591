// bnnflow compat wrapper for finn-hlslib's flatten.hpp.
// Why: finn-plus 1.6.1's npy2apintstream.hpp calls unflatten(), which is in the finn-hlslib commit
// finn-plus pins (8d979e2) but not in the newest commit we can obtain (0141fa8). This file
// includes that commit's flatten.hpp (linked into the simulation folder as flatten_upstream.hpp by
// build_flows/hls_sources.py) and adds unflatten(): the inverse of flatten(), element j taking bits
// [(j+1)*W-1 : j*W] of the packed word, reinterpreted as the element type. Drop it once the pinned
// finn-hlslib is available.
#ifndef BNNFLOW_FLATTEN_COMPAT_HPP
#define BNNFLOW_FLATTEN_COMPAT_HPP

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "flatten_upstream.hpp"

namespace bnnflow_compat {
// Raw bits -> value, per element type (the inverse of finn-hlslib's to_bitimage).
template <typename T>
inline void from_bitimage(T &dst, ap_uint<width_v<T>> const &bits) {
  static_assert(std::is_integral<T>::value, "unflatten: unsupported element type");
  dst = T(bits.to_uint64());
}
template <int W>
inline void from_bitimage(ap_uint<W> &dst, ap_uint<W> const &bits) { dst = bits; }
template <int W>
inline void from_bitimage(ap_int<W> &dst, ap_uint<W> const &bits) { dst.range(W - 1, 0) = bits; }
template <int W, int I, ap_q_mode Q, ap_o_mode O, int N>
inline void from_bitimage(ap_fixed<W, I, Q, O, N> &dst, ap_uint<W> const &bits) { dst.range(W - 1, 0) = bits; }
template <int W, int I, ap_q_mode Q, ap_o_mode O, int N>
inline void from_bitimage(ap_ufixed<W, I, Q, O, N> &dst, ap_uint<W> const &bits) { dst.range(W - 1, 0) = bits; }
inline void from_bitimage(half &dst, ap_uint<16> const &bits) {
  uint16_t i = bits.to_uint();
  std::memcpy(&dst, &i, sizeof dst);
}
inline void from_bitimage(float &dst, ap_uint<32> const &bits) {
  uint32_t i = bits.to_uint();
  std::memcpy(&dst, &i, sizeof dst);
}
inline void from_bitimage(double &dst, ap_uint<64> const &bits) {
  uint64_t i = bits.to_uint64();
  std::memcpy(&dst, &i, sizeof dst);
}
}  // namespace bnnflow_compat

// Unflatten an ap_uint<> into an array of N elements of type T (packed wider words: upper bits ignored).
template <typename T, size_t N, int WP>
void unflatten(T (&buffer)[N], ap_uint<WP> const &packed) {
  constexpr size_t W = width_v<T>;
  static_assert(N * W <= size_t(WP), "unflatten: packed word too narrow");
  for (size_t j = 0; j < N; j++) {
    ap_uint<W> const bits = packed((j + 1) * W - 1, j * W);
    bnnflow_compat::from_bitimage(buffer[j], bits);
  }
}

#endif

// bnnflow compat wrapper for finn-hlslib's flatten.hpp.
// Why: finn-plus 1.6.1's npy2apintstream.hpp calls unflatten(), which is in the finn-hlslib commit
// finn-plus pins (8d979e2) but not in the newest commit we can obtain (0141fa8). This file
// includes that commit's flatten.hpp (linked into the simulation folder as flatten_upstream.hpp by
// build_flows/hls_sources.py) and adds unflatten(): the inverse of flatten(), element j taking bits
// [(j+1)*W-1 : j*W] of the packed word, reinterpreted as the element type. Drop it once the pinned
// finn-hlslib is available.
// It also packs arrays of ap_int/ap_uint elements faster than upstream's flatten(), with the same bits:
// upstream assigns one element range at a time, and each range assignment on the open-source ap_int
// rewrites the whole packed word, so a word of N one-bit elements took N^2 bit operations. FINN's
// testbench (npy2apintstream) packs every input and streamed weight word with it: 70 % of a BinaryDenseNet
// MVAU's cppsim run. tests/test_sim.py compares both on random words.
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

#ifdef BNNFLOW_COUNT_FLATTEN
inline size_t fast_flatten_calls = 0;  // tests/test_sim.py: shows that overload resolution picks the fast path
#endif

// Pack N W-bit raw bit images (W <= 64) into 64-bit limbs, then into the packed word, one limb per range.
template <int W, size_t N, typename Bits>
ap_uint<N * W> pack_limbs(Bits bits_of) {
  static_assert(W >= 1 && W <= 64, "pack_limbs: element wider than 64 bits");
#ifdef BNNFLOW_COUNT_FLATTEN
  fast_flatten_calls++;
#endif
  constexpr size_t TOTAL = N * W, LIMBS = (TOTAL + 63) / 64;
  constexpr uint64_t MASK = W == 64 ? ~uint64_t(0) : (uint64_t(1) << W) - 1;
  uint64_t limbs[LIMBS] = {};
  for (size_t j = 0; j < N; j++) {
    uint64_t const bits = bits_of(j) & MASK;
    size_t const pos = j * W, limb = pos / 64, shift = pos % 64;
    limbs[limb] |= bits << shift;
    if (shift + W > 64) limbs[limb + 1] |= bits >> (64 - shift);  // shift > 0 here
  }
  ap_uint<TOTAL> flat = 0;
  for (size_t k = 0; k < LIMBS; k++) {
    size_t const lo = 64 * k, hi = (lo + 64 < TOTAL ? lo + 64 : TOTAL) - 1;
    flat(hi, lo) = ap_uint<64>(limbs[k]);
  }
  return flat;
}
}  // namespace bnnflow_compat

// More specialised than upstream's flatten(T const (&)[N]), so overload resolution picks these.
template <int W, size_t N, typename std::enable_if<(W <= 64), int>::type = 0>
ap_uint<N * W> flatten(ap_uint<W> const (&buffer)[N]) {
  return bnnflow_compat::pack_limbs<W, N>([&](size_t j) { return uint64_t(buffer[j].to_uint64()); });
}
template <int W, size_t N, typename std::enable_if<(W <= 64), int>::type = 0>
ap_uint<N * W> flatten(ap_int<W> const (&buffer)[N]) {
  return bnnflow_compat::pack_limbs<W, N>([&](size_t j) { return uint64_t(buffer[j].to_int64()); });
}

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

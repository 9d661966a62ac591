// bnnflow stand-in for Vitis HLS's <hls_vector.h>, for C simulation (FINN cppsim) only.
// Why: finn-plus's generated Pool/DuplicateStreams code, npy2vectorstream.hpp and finn-hlslib's
// flatten/utils name hls::vector<T, N>; Vitis ships it, the open-source ap_int headers do not.
// A fixed-size array with indexing, iteration, broadcast and initializer-list construction and
// element-wise arithmetic/comparison, which is all these users need.
#ifndef BNNFLOW_HLS_VECTOR_H
#define BNNFLOW_HLS_VECTOR_H

#include <cstddef>
#include <initializer_list>

namespace hls {

template <typename T, std::size_t N>
class vector {
 public:
  using value_type = T;
  vector() : data_{} {}
  vector(const T &v) {  // broadcast
    for (std::size_t i = 0; i < N; i++) data_[i] = v;
  }
  vector(std::initializer_list<T> l) : data_{} {
    std::size_t i = 0;
    for (const T &v : l) {
      if (i == N) break;
      data_[i++] = v;
    }
  }
  template <typename U>
  explicit vector(const vector<U, N> &o) {
    for (std::size_t i = 0; i < N; i++) data_[i] = T(o[i]);
  }

  static constexpr std::size_t size() { return N; }
  T &operator[](std::size_t i) { return data_[i]; }
  const T &operator[](std::size_t i) const { return data_[i]; }
  T *begin() { return data_; }
  T *end() { return data_ + N; }
  const T *begin() const { return data_; }
  const T *end() const { return data_ + N; }

#define BNNFLOW_VEC_OP(op)                                              \
  vector &operator op##=(const vector &o) {                             \
    for (std::size_t i = 0; i < N; i++) data_[i] op## = o.data_[i];     \
    return *this;                                                       \
  }                                                                     \
  friend vector operator op(vector a, const vector &b) { return a op## = b; }
  BNNFLOW_VEC_OP(+)
  BNNFLOW_VEC_OP(-)
  BNNFLOW_VEC_OP(*)
  BNNFLOW_VEC_OP(/)
  BNNFLOW_VEC_OP(&)
  BNNFLOW_VEC_OP(|)
  BNNFLOW_VEC_OP(^)
#undef BNNFLOW_VEC_OP

  friend bool operator==(const vector &a, const vector &b) {
    for (std::size_t i = 0; i < N; i++)
      if (!(a.data_[i] == b.data_[i])) return false;
    return true;
  }
  friend bool operator!=(const vector &a, const vector &b) { return !(a == b); }

 private:
  T data_[N];
};

}  // namespace hls

#endif

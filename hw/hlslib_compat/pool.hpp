// bnnflow stand-in for finn-hlslib's pool.hpp with the hls::vector Pool API.
// Why: finn-plus 1.6.1 generates `MaxPoolFunction<V>`, `AccPoolFunction<V>`,
// `AvgPoolFunction<VO, VA, n>`, `QuantAvgPoolFunction<VO, VA, shift>` and
// `Pool_batch<ISIZE, K>(in, out, f)` on hls::vector streams; the finn-hlslib we can obtain (0141fa8)
// has an older, incompatible API under the same class names, so this file replaces its pool.hpp.
// THIS IS OUR RE-IMPLEMENTATION, not finn-hlslib's code: Pool_hls in cppsim checks it, and the
// report labels Pool_hls as such. Semantics (FINN's Pool node): every K consecutive input vectors
// form one window; the output is, per lane, max (MaxPool), sum (AccPool), sum / n (AvgPool,
// truncating toward zero) or sum >> shift (QuantAvgPool) of the window, cast to the output element type.
#ifndef BNNFLOW_POOL_COMPAT_HPP
#define BNNFLOW_POOL_COMPAT_HPP

#include <ap_int.h>
#include <hls_stream.h>
#include <hls_vector.h>

#include <cstddef>

namespace bnnflow_compat {
template <typename T>
struct lowest {  // the smallest value of an ap_(u)int element
  static T value() {
    T t = 0;
    if (T(-1) < T(0)) t[T::width - 1] = 1;  // signed: -2^(W-1)
    return t;
  }
};
}  // namespace bnnflow_compat

template <typename V>
struct MaxPoolFunction {
  using acc_t = V;
  using elem_t = typename V::value_type;
  V init() const { return V(bnnflow_compat::lowest<elem_t>::value()); }
  template <typename VI>
  V pool(VI const &in, V const &acc) const {
    V r;
    for (std::size_t i = 0; i < V::size(); i++) {
      elem_t const x = elem_t(in[i]);
      r[i] = x > acc[i] ? x : acc[i];
    }
    return r;
  }
  V activate(V const &acc) const { return acc; }
};

namespace bnnflow_compat {
// what AccPool, AvgPool and QuantAvgPool share: a running per-lane sum in the accumulator type VA
template <typename VA>
struct SumPool {
  using acc_t = VA;
  using elem_t = typename VA::value_type;
  VA init() const { return VA(elem_t(0)); }
  template <typename VI>
  VA pool(VI const &in, VA const &acc) const {
    VA r;
    for (std::size_t i = 0; i < VA::size(); i++) r[i] = acc[i] + elem_t(in[i]);
    return r;
  }
};
}  // namespace bnnflow_compat

template <typename V>
struct AccPoolFunction : bnnflow_compat::SumPool<V> {
  V activate(V const &acc) const { return acc; }
};

template <typename VO, typename VA, unsigned n>
struct AvgPoolFunction : bnnflow_compat::SumPool<VA> {
  VO activate(VA const &acc) const {
    VO r;
    // C++ integer division of the signed sum (truncating toward zero); ap_int's own signed/unsigned
    // division would treat a negative sum as unsigned
    for (std::size_t i = 0; i < VO::size(); i++)
      r[i] = typename VO::value_type(acc[i].to_int64() / (long long)n);
    return r;
  }
};

template <typename VO, typename VA, unsigned shift>
struct QuantAvgPoolFunction : bnnflow_compat::SumPool<VA> {
  VO activate(VA const &acc) const {
    VO r;
    for (std::size_t i = 0; i < VO::size(); i++) r[i] = typename VO::value_type(acc[i] >> shift);
    return r;
  }
};

// ISIZE input vectors, every K consecutive ones pooled into one output vector.
template <unsigned ISIZE, unsigned K, typename TI, typename TO, typename F>
void Pool_batch(hls::stream<TI> &in, hls::stream<TO> &out, F const &f) {
  static_assert(ISIZE % K == 0, "Pool_batch: ISIZE must be a multiple of K");
  typename F::acc_t acc = f.init();
  for (unsigned i = 0; i < ISIZE; i++) {
    if (i % K == 0) acc = f.init();
    acc = f.pool(in.read(), acc);
    if (i % K == K - 1) out.write(f.activate(acc));
  }
}

#endif

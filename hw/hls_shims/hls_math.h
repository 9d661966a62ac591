// bnnflow stand-in for Vitis HLS's <hls_math.h>: finn-hlslib includes it; the integer and binary
// layers use no hls:: math function, so the C library's <cmath> (also under hls::) suffices.
#ifndef BNNFLOW_HLS_MATH_H
#define BNNFLOW_HLS_MATH_H
#include <cmath>
namespace hls {
using std::abs;
using std::exp;
using std::floor;
using std::ceil;
using std::log;
using std::max;
using std::min;
using std::sqrt;
}  // namespace hls
#endif

// bnnflow stand-in for Vitis HLS's <hls_half.h>: Vitis defines the type `half` there, and FINN's
// cnpy.h and finn-hlslib's flatten/interpret use it. GCC >= 12 has the IEEE binary16 _Float16.
#ifndef BNNFLOW_HLS_HALF_H
#define BNNFLOW_HLS_HALF_H
typedef _Float16 half;
#endif

// bnnflow stand-in for Vitis HLS's <ap_float.h>: finn-hlslib's flatten.hpp names ap_float<W, E>
// only inside a template that no integer/binary layer instantiates, so a declaration suffices.
#ifndef BNNFLOW_AP_FLOAT_H
#define BNNFLOW_AP_FLOAT_H
template <int W, int E>
class ap_float;
#endif

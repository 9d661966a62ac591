// bnnflow wrapper for the open-source ap_int.h (HLS_arbitrary_Precision_Types): Vitis's ap_int.h
// also makes the type `half` available, and FINN's cnpy.h relies on that. The real header is
// linked into the simulation folder as ap_oss/ap_int.h by build_flows/hls_sources.py.
#ifndef BNNFLOW_AP_INT_WRAPPER_H
#define BNNFLOW_AP_INT_WRAPPER_H
#include "hls_half.h"
#include "ap_oss/ap_int.h"
#endif

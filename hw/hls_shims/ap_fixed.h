// bnnflow wrapper for the open-source ap_fixed.h (see ap_int.h here): adds `half` as Vitis does.
#ifndef BNNFLOW_AP_FIXED_WRAPPER_H
#define BNNFLOW_AP_FIXED_WRAPPER_H
#include "hls_half.h"
#include "ap_oss/ap_fixed.h"
#endif

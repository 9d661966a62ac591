// bnnflow stand-in for Vitis HLS's <ap_axi_sdata.h>: finn-hlslib's streamtools.h includes it for
// the QDMA/AXI-stream adapters (qdma_axis), which no FINN layer uses in cppsim; these structs only
// have to exist for the header to parse (they carry data/keep/last like the Vitis ones).
#ifndef BNNFLOW_AP_AXI_SDATA_H
#define BNNFLOW_AP_AXI_SDATA_H
#include <ap_int.h>

template <int D, int U, int TI, int TD>
struct qdma_axis {
  ap_uint<D> data;
  ap_uint<(D + 7) / 8> keep;
  ap_uint<1> last;
  ap_uint<D> get_data() const { return data; }
  void set_data(const ap_uint<D> &d) { data = d; }
  void set_keep(const ap_uint<(D + 7) / 8> &k) { keep = k; }
  void set_last(const ap_uint<1> &l) { last = l; }
};

template <int D, int U = 1, int TI = 1, int TD = 1>
struct ap_axiu {
  ap_uint<D> data;
  ap_uint<(D + 7) / 8> keep, strb;
  ap_uint<U> user;
  ap_uint<1> last;
  ap_uint<TI> id;
  ap_uint<TD> dest;
};

template <int D, int U = 1, int TI = 1, int TD = 1>
struct ap_axis {
  ap_int<D> data;
  ap_uint<(D + 7) / 8> keep, strb;
  ap_uint<U> user;
  ap_uint<1> last;
  ap_uint<TI> id;
  ap_uint<TD> dest;
};
#endif

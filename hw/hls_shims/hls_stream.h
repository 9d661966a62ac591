// bnnflow stand-in for Vitis HLS's <hls_stream.h>, for C simulation (FINN cppsim) only.
// Why: FINN's cppsim testbenches and finn-hlslib use hls::stream; Vitis ships the header, the
// open-source ap_int headers do not. Semantics as in Vitis csim: an unbounded FIFO (the DEPTH
// parameter is accepted and ignored); reading an empty stream warns and returns T() (set
// HLS_SHIM_STRICT=1 in the environment to abort instead); data left unread is reported when the
// stream is destroyed. Single-threaded, as FINN's cppsim runs a node's dataflow sequentially.
#ifndef BNNFLOW_HLS_STREAM_H
#define BNNFLOW_HLS_STREAM_H

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <string>

namespace hls {

template <typename T, int DEPTH = 0>
class stream {
 public:
  stream() : name_("hls::stream") {}
  explicit stream(const char *name) : name_(name ? name : "hls::stream") {}
  stream(const stream &) = delete;
  stream &operator=(const stream &) = delete;
  ~stream() {
    if (!q_.empty())
      std::fprintf(stderr, "hls_shim: stream '%s' destroyed with %zu unread element(s)\n", name_.c_str(), q_.size());
  }

  bool empty() const { return q_.empty(); }
  bool full() const { return false; }
  std::size_t size() const { return q_.size(); }

  T read() {
    if (q_.empty()) {
      std::fprintf(stderr, "hls_shim: read from empty stream '%s'\n", name_.c_str());
      const char *strict = std::getenv("HLS_SHIM_STRICT");
      if (strict && strict[0] == '1') std::abort();
      return T();
    }
    T v = q_.front();
    q_.pop_front();
    return v;
  }
  void read(T &v) { v = read(); }
  bool read_nb(T &v) {
    if (q_.empty()) return false;
    v = read();
    return true;
  }
  void write(const T &v) { q_.push_back(v); }
  bool write_nb(const T &v) {
    write(v);
    return true;
  }
  stream &operator>>(T &v) {
    read(v);
    return *this;
  }
  stream &operator<<(const T &v) {
    write(v);
    return *this;
  }

 private:
  std::deque<T> q_;
  std::string name_;
};

}  // namespace hls

#endif

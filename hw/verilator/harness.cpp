// bnnflow's AXI-stream test bench for one FINN RTL node under Verilator (build_flows/verilator_sim.py).
//
// Usage: ./Vdut IO_DIR IMAGES WORDS_OUT0 [WORDS_OUT1 ...] (WORDS_OUTk: output words per image)
// Reads IO_DIR/inK.hex (one word per line, hex, most significant digit first) for every input stream
// listed in ports.h, drives inK_V_TDATA/TVALID while honouring TREADY, keeps outK_V_TREADY high and
// writes every accepted outK_V_TDATA word to IO_DIR/outK.hex. IO_DIR/cycles.txt gets, per image, the
// cycle (after reset) at which its last out0 word was accepted. Exit 0 when every output word arrived,
// 3 when nothing moved for BNNFLOW_STALL_CYCLES cycles (default 200000).
// ports.h (generated per node) defines BNNFLOW_INPUTS(X) and BNNFLOW_OUTPUTS(X) as X(index, port).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "Vdut.h"
#include "verilated.h"
#include "ports.h"

using Word = std::vector<uint32_t>;  // little-endian 32-bit limbs

static Word parse_hex(const std::string &s) {
  Word w;
  int end = (int)s.size();
  while (end > 0) {
    int begin = end > 8 ? end - 8 : 0;
    w.push_back((uint32_t)std::stoul(s.substr(begin, end - begin), nullptr, 16));
    end = begin;
  }
  return w;
}

static std::string to_hex(const Word &w) {
  std::string s;
  char buf[9];
  for (size_t i = w.size(); i-- > 0;) {
    std::snprintf(buf, sizeof buf, "%08x", w[i]);
    s += buf;
  }
  return s;
}

// Verilator types a port as CData/SData/IData/QData up to 64 bits and VlWide<N> above.
template <typename T> static void put(T &port, const Word &w) {
  uint64_t v = 0;
  for (size_t i = 0; i < w.size() && i < 2; i++) v |= (uint64_t)w[i] << (32 * i);
  port = (T)v;
}
template <std::size_t N> static void put(VlWide<N> &port, const Word &w) {
  for (size_t i = 0; i < N; i++) port[i] = i < w.size() ? w[i] : 0;
}
template <typename T> static Word get(const T &port) {
  uint64_t v = (uint64_t)port;
  return Word{(uint32_t)v, (uint32_t)(v >> 32)};
}
template <std::size_t N> static Word get(const VlWide<N> &port) {
  Word w(N);
  for (size_t i = 0; i < N; i++) w[i] = port[i];
  return w;
}

struct Stream {
  std::vector<Word> words;
  size_t pos = 0;
};

static std::vector<Word> read_words(const std::string &path) {
  std::ifstream f(path);
  if (!f) {
    std::fprintf(stderr, "harness: cannot read %s\n", path.c_str());
    std::exit(2);
  }
  std::vector<Word> out;
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) out.push_back(parse_hex(line));
  return out;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s IO_DIR IMAGES WORDS_OUT0 [WORDS_OUT1 ...]\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  const long images = std::atol(argv[2]);
  const char *stall_env = std::getenv("BNNFLOW_STALL_CYCLES");
  const long stall_limit = stall_env ? std::atol(stall_env) : 200000;
  Verilated::commandArgs(1, argv);
  Vdut top;
  std::vector<Stream> in(16), out(16);
  std::vector<long> expected(16, 0);
#define LOAD(k, port) in[k].words = read_words(dir + "/in" #k ".hex");
  BNNFLOW_INPUTS(LOAD)
#define EXPECT(k, port) expected[k] = std::atol(argv[3 + k]) * images;
  BNNFLOW_OUTPUTS(EXPECT)

  top.ap_rst_n = 0;
  for (int i = 0; i < 16; i++) {  // reset: 8 clock cycles
    top.ap_clk = i & 1;
    top.eval();
  }
  top.ap_rst_n = 1;
  long cycle = 0, idle = 0;
  std::vector<long> done_at;
  for (;;) {
    bool finished = true;
#define DRIVE(k, port)                                                        \
  if (in[k].pos < in[k].words.size()) put(top.port##_TDATA, in[k].words[in[k].pos]); \
  top.port##_TVALID = in[k].pos < in[k].words.size();
    BNNFLOW_INPUTS(DRIVE)
#define READY(k, port) top.port##_TREADY = 1;
    BNNFLOW_OUTPUTS(READY)
    top.ap_clk = 0;
    top.eval();
    bool moved = false;
    // what the rising edge will see: a handshake is TVALID && TREADY before it
#define TAKE_IN(k, port) \
  if (top.port##_TVALID && top.port##_TREADY) { in[k].pos++; moved = true; }
    BNNFLOW_INPUTS(TAKE_IN)
#define TAKE_OUT(k, port)                                                   \
  if (top.port##_TVALID && top.port##_TREADY) {                            \
    out[k].words.push_back(get(top.port##_TDATA));                         \
    moved = true;                                                          \
    if (k == 0 && out[0].words.size() % (expected[0] / images) == 0) done_at.push_back(cycle); \
  }                                                                        \
  finished = finished && (long)out[k].words.size() >= expected[k];
    BNNFLOW_OUTPUTS(TAKE_OUT)
    top.ap_clk = 1;
    top.eval();
    cycle++;
    if (finished) break;
    idle = moved ? 0 : idle + 1;
    if (idle > stall_limit) {
      std::fprintf(stderr, "harness: stalled at cycle %ld (no handshake for %ld cycles)\n", cycle, idle);
      return 3;
    }
  }
#define SAVE(k, port)                                                 \
  {                                                                   \
    std::ofstream f(dir + "/out" #k ".hex");                          \
    for (auto const &w : out[k].words) f << to_hex(w) << "\n";       \
  }
  BNNFLOW_OUTPUTS(SAVE)
  std::ofstream c(dir + "/cycles.txt");
  for (long t : done_at) c << t << "\n";
  top.final();
  return 0;
}

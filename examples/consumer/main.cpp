// Uses an installed rnncore (see CMakeLists.txt): picks a registry cell by name (default: every
// cell), runs an inference forward over a batch of sequences, and checks that running the first
// and second half one after the other, the second starting from the first's final state, gives
// the same outputs and final state as the whole sequence. Exit status 0 when it does.
#include <cmath>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <vector>

#include "rnncore/cells.hpp"
#include "rnncore/sequence.hpp"

namespace {

using Real = double;

// Largest |a - b| between the whole-sequence run and the two-halves run of one cell.
template <class Cell>
double split_run_difference() {
  const rnncore::Index T = 10, half = T / 2, B = 3, I = 4, H = 6, GH = Cell::kGates * H;
  std::mt19937 gen(7);
  std::uniform_real_distribution<Real> u(-0.5, 0.5);
  auto random = [&](rnncore::Index n) {
    std::vector<Real> v(n);
    for (Real& e : v) e = u(gen);
    return v;
  };
  const std::vector<Real> w_ih = random(GH * I), w_hh = random(GH * H), b_ih = random(GH),
                          b_hh = random(GH), peephole = random(3 * H), x = random(T * B * I),
                          h0 = random(B * H), c0 = random(B * H);
  const rnncore::LayerWeights<Real> w{w_ih.data(), w_hh.data(), b_ih.data(), b_hh.data(),
                                      Cell::kHasPeephole ? peephole.data() : nullptr};

  // The whole sequence. (c0 and c_n are ignored by cells without a cell state.)
  std::vector<Real> y(T * B * H), h_n(B * H), c_n(B * H);
  rnncore::forward_inference<Cell, Real>({T, B, I, H}, w, x.data(), h0.data(), c0.data(),
                                         /*lengths=*/nullptr, /*reverse=*/false, y.data(),
                                         h_n.data(), c_n.data());

  // Steps [0, half), then [half, T) from the state reached.
  std::vector<Real> y1(half * B * H), h_mid(B * H), c_mid(B * H);
  std::vector<Real> y2((T - half) * B * H), h_end(B * H), c_end(B * H);
  rnncore::forward_inference<Cell, Real>({half, B, I, H}, w, x.data(), h0.data(), c0.data(),
                                         nullptr, false, y1.data(), h_mid.data(), c_mid.data());
  rnncore::forward_inference<Cell, Real>({T - half, B, I, H}, w, x.data() + half * B * I,
                                         h_mid.data(), c_mid.data(), nullptr, false, y2.data(),
                                         h_end.data(), c_end.data());

  double worst = 0;
  for (std::size_t k = 0; k < y1.size(); ++k) worst = std::fmax(worst, std::fabs(y[k] - y1[k]));
  for (std::size_t k = 0; k < y2.size(); ++k)
    worst = std::fmax(worst, std::fabs(y[y1.size() + k] - y2[k]));
  for (std::size_t k = 0; k < h_n.size(); ++k) {
    worst = std::fmax(worst, std::fabs(h_n[k] - h_end[k]));
    if (Cell::kHasCellState) worst = std::fmax(worst, std::fabs(c_n[k] - c_end[k]));
  }
  // The last output is the final hidden state.
  for (std::size_t k = 0; k < h_n.size(); ++k)
    worst = std::fmax(worst, std::fabs(y[(T - 1) * B * H + k] - h_n[k]));
  return worst;
}

bool check(const char* name) {
  const double worst = rnncore::with_cell(
      name, [](auto tag) { return split_run_difference<typename decltype(tag)::type>(); });
  const bool ok = worst < 1e-12;
  std::printf("%-18s whole vs two halves: max |difference| %.1e -> %s\n", name, worst,
              ok ? "OK" : "MISMATCH");
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  std::printf("rnncore %s from find_package(rnncore)\n", RNNCORE_PACKAGE_VERSION);
  bool ok = true;
  try {
    if (argc > 1) {
      ok = check(argv[1]);
    } else {
      for (const rnncore::CellInfo& cell : rnncore::kCells) ok = check(cell.name) && ok;
    }
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  return ok ? 0 : 1;
}

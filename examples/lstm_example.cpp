// rnncore from C++ without Python: one LSTM layer, a training forward, BPTT, and a
// finite-difference check of one weight gradient.
//
//   cmake -S . -B build-cpp -DRNNCORE_BUILD_EXAMPLES=ON && cmake --build build-cpp -j2
//   ./build-cpp/lstm_example
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "rnncore/cells.hpp"
#include "rnncore/runtime.hpp"
#include "rnncore/sequence.hpp"

using Cell = rnncore::LstmCell</*Peephole=*/false>;
using Real = double;  // float works the same; double makes the finite-difference check tight

int main() {
  const rnncore::SequenceShape shape{/*seq_len=*/12, /*batch=*/3, /*input_size=*/5,
                                     /*hidden_size=*/8};
  const rnncore::Index T = shape.seq_len, B = shape.batch, I = shape.input_size,
                       H = shape.hidden_size, GH = Cell::kGates * H;
  std::mt19937 gen(42);
  std::uniform_real_distribution<Real> u(-0.4, 0.4);
  auto random = [&](rnncore::Index n) {
    std::vector<Real> v(n);
    for (auto& e : v) e = u(gen);
    return v;
  };
  std::vector<Real> w_ih = random(GH * I), w_hh = random(GH * H), b_ih = random(GH),
                    b_hh = random(GH), x = random(T * B * I), dy = random(T * B * H);
  const int64_t lengths[] = {12, 7, 0};  // variable lengths; a length-0 sequence keeps h0
  rnncore::LayerWeights<Real> w{w_ih.data(), w_hh.data(), b_ih.data(), b_hh.data(), nullptr};

  // Loss = sum(dy * y): its gradient with respect to y is dy.
  auto loss = [&](const rnncore::LayerWeights<Real>& weights) {
    std::vector<Real> y(T * B * H), h_n(B * H), c_n(B * H);
    rnncore::forward_inference<Cell, Real>(shape, weights, x.data(), nullptr, nullptr, lengths,
                                           /*reverse=*/false, y.data(), h_n.data(), c_n.data());
    Real s = 0;
    for (rnncore::Index k = 0; k < T * B * H; ++k) s += dy[k] * y[k];
    return s;
  };

  std::vector<Real> y(T * B * H), h_n(B * H), c_n(B * H);
  rnncore::TrainingWorkspace<Real> ws;
  rnncore::forward_training<Cell, Real>(shape, w, x.data(), nullptr, nullptr, lengths, false,
                                        y.data(), h_n.data(), c_n.data(), ws);
  std::printf("training forward: workspace %zu bytes, h_n[0][0] = %.6f\n", ws.bytes(), h_n[0]);

  std::vector<Real> dw_ih(GH * I, 0), dw_hh(GH * H, 0), db_ih(GH, 0), db_hh(GH, 0);
  std::vector<Real> dx(T * B * I), dh0(B * H), dc0(B * H);
  rnncore::LayerGradients<Real> g{dw_ih.data(), dw_hh.data(), db_ih.data(), db_hh.data(), nullptr};
  rnncore::backward<Cell, Real>(w, ws, dy.data(), nullptr, nullptr, dx.data(), dh0.data(),
                                dc0.data(), g);

  // Central difference on a few recurrent weights.
  double worst = 0;
  for (rnncore::Index k : {rnncore::Index(0), GH * H / 3, GH * H - 1}) {
    const Real saved = w_hh[k], eps = 1e-6;
    w_hh[k] = saved + eps;
    const Real lp = loss(w);
    w_hh[k] = saved - eps;
    const Real lm = loss(w);
    w_hh[k] = saved;
    const double fd = (lp - lm) / (2 * eps), err = std::fabs(fd - dw_hh[k]);
    std::printf("dL/dw_hh[%td]: backward %+.9f  finite difference %+.9f\n", k, dw_hh[k], fd);
    worst = std::fmax(worst, err);
  }
  std::printf("threads %d, max |error| %.2e -> %s\n", rnncore::get_num_threads(), worst,
              worst < 1e-7 ? "OK" : "MISMATCH");
  return worst < 1e-7 ? 0 : 1;
}

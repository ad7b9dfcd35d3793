// rnncore's stack driver from C++: a 2-layer bidirectional LSTM with dropout between the layers,
// its gradients checked by finite differences, then trained by plain SGD to sum its input.
//
//   cmake -S . -B build-cpp -DRNNCORE_BUILD_EXAMPLES=ON && cmake --build build-cpp -j2
//   ./build-cpp/stack_example
//
// Task: x is (T, B, 1) noise; the target at every step t is the running sum x_0 + ... + x_t.
// The forward direction can compute it; the network must learn to read it from the right
// direction. Loss = mean squared error of a linear read-out of y (T, B, 2H).
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "rnncore/cells.hpp"
#include "rnncore/stack.hpp"

using Cell = rnncore::LstmCell</*Peephole=*/false>;
using Real = double;  // float works the same; double makes the finite-difference check tight
using rnncore::Index;

struct Network {
  rnncore::StackShape shape;
  // Per (layer, direction): w_ih, w_hh, b_ih, b_hh, in PyTorch's layout; then the read-out.
  std::vector<std::vector<Real>> weights, grads;
  std::vector<Real> readout, dreadout;  // (2H + 1): weights then bias

  Network(rnncore::StackShape s, std::mt19937& gen) : shape(s) {
    const Index G = Cell::kGates, H = shape.hidden_size;
    std::uniform_real_distribution<Real> u(-1.0 / std::sqrt(Real(H)), 1.0 / std::sqrt(Real(H)));
    for (Index l = 0; l < shape.num_layers; ++l)
      for (Index d = 0; d < shape.directions(); ++d)
        for (Index size : {G * H * shape.layer_input_size(l), G * H * H, G * H, G * H}) {
          weights.emplace_back(size);
          for (Real& v : weights.back()) v = u(gen);
          grads.emplace_back(size, Real(0));
        }
    readout.assign(shape.directions() * H + 1, Real(0));
    for (Index k = 0; k + 1 < Index(readout.size()); ++k) readout[k] = u(gen);
    dreadout.assign(readout.size(), Real(0));
  }

  rnncore::StackWeights<Real> stack_weights() const {
    rnncore::StackWeights<Real> w;
    for (std::size_t i = 0; i < weights.size(); i += 4)
      w.layers.push_back({weights[i].data(), weights[i + 1].data(), weights[i + 2].data(),
                          weights[i + 3].data(), nullptr});
    return w;
  }
  rnncore::StackGradients<Real> stack_gradients() {
    rnncore::StackGradients<Real> g;
    for (std::size_t i = 0; i < grads.size(); i += 4)
      g.layers.push_back({grads[i].data(), grads[i + 1].data(), grads[i + 2].data(),
                          grads[i + 3].data(), nullptr});
    return g;
  }

  // Training forward and, with `backprop`, BPTT of the MSE loss. Returns the loss.
  Real step(const std::vector<Real>& x, const std::vector<Real>& target,
            const rnncore::Dropout& dropout, rnncore::StackWorkspace<Real>& ws, bool backprop) {
    const Index T = shape.seq_len, B = shape.batch, DH = shape.directions() * shape.hidden_size;
    std::vector<Real> y(T * B * DH);
    // Zero initial states (nullptr h0, c0), no lengths, and no use for the final states h_n, c_n.
    rnncore::forward_training<Cell, Real>(shape, stack_weights(), dropout, x.data(), nullptr,
                                          nullptr, nullptr, y.data(), nullptr, nullptr, ws);
    Real loss = 0;
    std::vector<Real> dy(y.size());
    for (Index r = 0; r < T * B; ++r) {
      Real out = readout[DH];
      for (Index k = 0; k < DH; ++k) out += readout[k] * y[r * DH + k];
      const Real err = out - target[r];
      loss += err * err / Real(T * B);
      const Real dout = 2 * err / Real(T * B);
      for (Index k = 0; k < DH; ++k) {
        dy[r * DH + k] = dout * readout[k];
        dreadout[k] += dout * y[r * DH + k];
      }
      dreadout[DH] += dout;
    }
    if (backprop)  // only the parameter gradients are wanted: no dx, dh0, dc0
      rnncore::backward<Cell, Real>(stack_weights(), ws, dy.data(), nullptr, nullptr, nullptr,
                                    nullptr, nullptr, stack_gradients());
    return loss;
  }

  void zero_grad() {
    for (auto& g : grads) std::fill(g.begin(), g.end(), Real(0));
    std::fill(dreadout.begin(), dreadout.end(), Real(0));
  }
};

// A fresh batch: x (T, B, 1) noise, target the running sum of x over t.
struct RunningSumTask {
  rnncore::StackShape shape;
  std::mt19937& gen;
  std::normal_distribution<Real> noise{0.0, 0.5};

  void batch(std::vector<Real>& x, std::vector<Real>& target) {
    x.resize(shape.seq_len * shape.batch);
    target.resize(x.size());
    for (Index b = 0; b < shape.batch; ++b) {
      Real sum = 0;
      for (Index t = 0; t < shape.seq_len; ++t) {
        x[t * shape.batch + b] = noise(gen);
        sum += x[t * shape.batch + b];
        target[t * shape.batch + b] = sum;
      }
    }
  }
};

// 1. Gradients against central differences, dropout included: its masks are a function of
//    the seed, so every forward of the difference quotient sees the same ones. Three weights of
//    every array (first, middle, last); returns the worst error as a fraction of the tolerance.
Real check_gradients(Network& net, const std::vector<Real>& x, const std::vector<Real>& target,
                     rnncore::StackWorkspace<Real>& ws) {
  const rnncore::Dropout dropout{/*p=*/0.2, /*seed=*/42};
  net.zero_grad();
  net.step(x, target, dropout, ws, /*backprop=*/true);
  const std::vector<std::vector<Real>> analytic = net.grads;
  Real worst = 0;
  const char* names[] = {"w_ih", "w_hh", "b_ih", "b_hh"};
  for (std::size_t i = 0; i < net.weights.size(); ++i) {
    for (Index k : {Index(0), Index(net.weights[i].size() / 2), Index(net.weights[i].size() - 1)}) {
      Real& v = net.weights[i][k];
      const Real saved = v, eps = 1e-6;
      v = saved + eps;
      const Real plus = net.step(x, target, dropout, ws, false);
      v = saved - eps;
      const Real minus = net.step(x, target, dropout, ws, false);
      v = saved;
      const Real numeric = (plus - minus) / (2 * eps);
      // The quotient's own error is ~1e-10 (rounding of the loss over 2*eps): a tolerance of
      // 1e-8 + 1e-5 * |g| is far below any real mistake and far above that noise.
      const Real err = std::fabs(numeric - analytic[i][k]) / (1e-8 + 1e-5 * std::fabs(numeric));
      worst = std::max(worst, err);
      if (err > 1)
        std::printf("mismatch: layer-direction %zu %s[%td]: analytic %.9g numeric %.9g\n", i / 4,
                    names[i % 4], k, analytic[i][k], numeric);
    }
  }
  return worst;
}

// 2. Train: SGD with momentum on fresh batches. Returns whether the loss fell below a quarter of
//    its first value.
bool train(Network& net, RunningSumTask& task, rnncore::StackWorkspace<Real>& ws) {
  const Real lr = 0.05, momentum = 0.9;
  std::vector<std::vector<Real>> velocity(net.weights.size());
  for (std::size_t i = 0; i < velocity.size(); ++i) velocity[i].assign(net.weights[i].size(), 0);
  std::vector<Real> readout_velocity(net.readout.size(), 0);
  std::vector<Real> x, target;
  Real first = 0, last = 0;
  for (int it = 0; it < 300; ++it) {
    task.batch(x, target);
    net.zero_grad();
    const Real loss = net.step(x, target, {0.1, uint64_t(it)}, ws, true);
    if (it == 0) first = loss;
    last = loss;
    for (std::size_t i = 0; i < net.weights.size(); ++i)
      for (std::size_t k = 0; k < net.weights[i].size(); ++k) {
        velocity[i][k] = momentum * velocity[i][k] - lr * net.grads[i][k];
        net.weights[i][k] += velocity[i][k];
      }
    for (std::size_t k = 0; k < net.readout.size(); ++k) {
      readout_velocity[k] = momentum * readout_velocity[k] - lr * net.dreadout[k];
      net.readout[k] += readout_velocity[k];
    }
    if (it % 50 == 0 || it == 299) std::printf("step %3d  loss %.4f\n", it, loss);
  }
  std::printf("running-sum loss %.4f -> %.4f\n", first, last);
  return last < 0.25 * first;
}

int main() {
  const rnncore::StackShape shape{/*seq_len=*/10, /*batch=*/16, /*input_size=*/1,
                                  /*hidden_size=*/12, /*num_layers=*/2, /*bidirectional=*/true};
  std::mt19937 gen(7);
  Network net(shape, gen);
  rnncore::StackWorkspace<Real> ws;
  RunningSumTask task{shape, gen};
  std::vector<Real> x, target;
  task.batch(x, target);
  const Real worst = check_gradients(net, x, target, ws);
  std::printf("finite-difference check of %zu weights: worst error %.3f of the tolerance\n",
              3 * net.weights.size(), worst);
  if (worst > 1) return 1;
  return train(net, task, ws) ? 0 : 1;
}

// StepEngine (rnncore/step.hpp): checks and dispatch to the cell's StepImpl, which the cell's
// instantiation unit compiles (step_impl.hpp).
#include "rnncore/step.hpp"

#include <stdexcept>
#include <string>

#include "step_impl.hpp"

namespace rnncore {

template <class T>
StepEngine<T>::StepEngine(std::string_view cell, Index input_size, Index hidden_size)
    : info_(&find_cell(cell)), input_size_(input_size), hidden_size_(hidden_size) {
  if (input_size <= 0 || hidden_size <= 0)
    throw std::invalid_argument("StepEngine: input_size and hidden_size must be positive, got " +
                                std::to_string(input_size) + " and " +
                                std::to_string(hidden_size));
  impl_ = with_cell(cell, [&](auto tag) {
    return detail::make_step_impl<typename decltype(tag)::type, T>(input_size, hidden_size);
  });
}

template <class T>
StepEngine<T>::~StepEngine() = default;
template <class T>
StepEngine<T>::StepEngine(StepEngine&&) noexcept = default;
template <class T>
StepEngine<T>& StepEngine<T>::operator=(StepEngine&&) noexcept = default;

template <class T>
void StepEngine<T>::set_weights(const LayerWeights<T>& w) {
  if (!w.w_ih || !w.w_hh || (info_->peephole_rows && !w.w_peephole))
    throw std::invalid_argument(std::string("StepEngine::set_weights: ") + info_->name +
                                " needs w_ih, w_hh" + (info_->peephole_rows ? " and w_peephole" : ""));
  impl_->set_weights(w);
}

template <class T>
bool StepEngine<T>::has_weights() const {
  return impl_->has_weights();
}

template <class T>
void StepEngine<T>::forward(Index batch, const T* x, const T* h_prev, const T* c_prev, T* h,
                            T* c, T* stash) {
  impl_->forward(batch, x, h_prev, c_prev, h, c, stash);
}

template <class T>
void StepEngine<T>::backward(Index batch, const T* x, const T* h_prev, const T* c_prev,
                             const T* h, const T* c, T* stash, const T* dh, const T* dc, T* dx,
                             T* dh_prev, T* dc_prev, const LayerGradients<T>& grads) {
  impl_->backward(batch, x, h_prev, c_prev, h, c, stash, dh, dc, dx, dh_prev, dc_prev, grads);
}

template <class T>
std::size_t StepEngine<T>::bytes() const {
  return impl_->bytes();
}

template class StepEngine<float>;
template class StepEngine<double>;

}  // namespace rnncore

// chain_base.cpp — aligned buffers and the flat parameter store every chain is built on.
#include "gradchain/chain_base.h"

#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

namespace gradchain {

// ---------------------------------------------------------------------------
// Buffer
// ---------------------------------------------------------------------------
template <class T>
Buffer<T>::Buffer(int64_t n, const char* what) : n_(n) {
  if (n <= 0) return;
  if (uint64_t(n) > uint64_t(std::numeric_limits<int64_t>::max()) / sizeof(T) / 2)
    throw AllocError(alloc_message(what, double(n) * double(sizeof(T))));
  const size_t bytes = ((size_t(n) * sizeof(T) + 63) / 64) * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw AllocError(alloc_message(what, double(bytes)));
  ptr_.reset(static_cast<T*>(p));
}

template <class T>
void Buffer<T>::Free::operator()(void* p) const {
  std::free(p);
}

template class Buffer<float>;
template class Buffer<double>;

// ---------------------------------------------------------------------------
// The parameter layout and the flat store
// ---------------------------------------------------------------------------
template <class T>
int64_t ChainBase<T>::add_tensor(std::string name, std::vector<int64_t> shape, int kind) {
  int64_t numel = 1;
  for (int64_t d : shape) {
    if (bounded_ && numel > kMaxTensorValues / d)
      throw AllocError("gradchain: cannot allocate the parameters of " + describe_() +
                       ": more than 2^40 values");
    numel *= d;
  }
  int64_t& cursor = kind == 0 ? np_ : nb_;
  tensors_.push_back({std::move(name), cursor, std::move(shape), kind});
  const int64_t off = cursor;
  cursor += numel;
  return off;
}

template <class T>
void ChainBase<T>::allocate_tensors(const std::string& what) {
  try {
    params_ = Buffer<T>(np_);
    grads_ = Buffer<T>(np_);
    buffers_ = Buffer<T>(nb_);
  } catch (const std::bad_alloc&) {
    throw AllocError(alloc_message(what + " " + describe_(),
                                   double(2 * np_ + nb_) * double(sizeof(T))));
  }
  std::memset(params_.data(), 0, size_t(np_) * sizeof(T));
  std::memset(grads_.data(), 0, size_t(np_) * sizeof(T));
}

template <class T>
std::vector<std::pair<T*, int64_t>> ChainBase<T>::grad_spans() {
  std::vector<std::pair<T*, int64_t>> out;
  for (auto& t : tensors_) {
    if (t.kind != 0) continue;
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    out.emplace_back(grads_.data() + t.offset, numel);
  }
  return out;
}

template class ChainBase<float>;
template class ChainBase<double>;

}  // namespace gradchain

// The operator schemas of the jwae_ext namespace and the Python module that loads them.
// Backends register implementations from their own files (csrc/<op>.cpp, csrc/cuda/<op>.cu);
// autograd and fake (meta) kernels are registered from Python in jwae_ext/ops/.
#include <torch/extension.h>

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

TORCH_LIBRARY(jwae_ext, m) {
  // Schemas are grouped by operator family; each family's kernels live in the file of its name.

  // ---- hinge: max-of-hinges loss (csrc/hinge.cpp, csrc/cuda/hinge.cu, jwae_ext/ops/hinge.py).
  // Per-query costs of both directions and their support: the hardest negative's index (-1 where
  // the cost is 0) with max_violation, the number of active hinges without.
  m.def(
      "mh_loss(Tensor img_emb, Tensor txt_emb, float margin, bool max_violation, "
      "Tensor? img_ids, Tensor? txt_ids) -> (Tensor cost_i2t, Tensor cost_t2i, "
      "Tensor support_i2t, Tensor support_t2i)");
  m.def(
      "mh_loss_backward(Tensor grad_i2t, Tensor grad_t2i, Tensor img_emb, Tensor txt_emb, "
      "float margin, bool max_violation, Tensor? img_ids, Tensor? txt_ids, Tensor support_i2t, "
      "Tensor support_t2i) -> (Tensor grad_img, Tensor grad_txt)");
  m.def(
      "mh_loss_from_scores(Tensor scores, float margin, bool max_violation, Tensor? img_ids, "
      "Tensor? txt_ids) -> (Tensor cost_i2t, Tensor cost_t2i, Tensor support_i2t, "
      "Tensor support_t2i)");
  m.def(
      "mh_loss_from_scores_backward(Tensor grad_i2t, Tensor grad_t2i, Tensor scores, "
      "float margin, bool max_violation, Tensor? img_ids, Tensor? txt_ids, Tensor support_i2t, "
      "Tensor support_t2i) -> Tensor grad_scores");

  // ranking (csrc/ranking.cpp, csrc/cuda/ranking.cu): exact retrieval ranks and top-k search.
  m.def("retrieval_ranks(Tensor img_emb, Tensor cap_emb, Tensor cap_to_img) -> (Tensor, Tensor)");
  m.def("retrieval_thresholds(Tensor img_emb, Tensor cap_emb, Tensor cap_to_img) -> (Tensor, Tensor)");
  m.def(
      "retrieval_count_above(Tensor img_emb, Tensor cap_emb, Tensor cap_to_img, "
      "Tensor img_thresholds, Tensor cap_thresholds) -> (Tensor, Tensor)");
  m.def("topk_search(Tensor queries, Tensor gallery, int k) -> (Tensor, Tensor)");
  // end ranking
}

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  pybind11::list backends;
  backends.append("cpu");
#ifdef WITH_CUDA
  backends.append("cuda");
  info["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." +
                         std::to_string((CUDART_VERSION % 1000) / 10);
#else
  info["cuda_version"] = pybind11::none();
#endif
  info["backends"] = backends;
  info["torch_version"] = JWAE_TORCH_VERSION;
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "jwae_ext compiled operators (registered under torch.ops.jwae_ext)";
  m.def("build_info", &build_info,
        "Backends compiled into this build and the torch/CUDA versions it was built against.");
}

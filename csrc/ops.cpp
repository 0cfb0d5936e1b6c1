// The operator schemas of the jwae_ext namespace and the Python module that loads them.
// Backends register implementations from the files named after the operator (csrc/<op>.cpp,
// csrc/cuda/<op>.cu); autograd and fake (meta) kernels are registered from Python, in
// jwae_ext/ops/<op>.py, for every operator. docs/design.md#where-an-operator-lives.
#include <torch/extension.h>

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

TORCH_LIBRARY(jwae_ext, m) {
  // Schemas are grouped by operator family; each family's kernels live in the file of its name.

  // ---- hinge: max-of-hinges loss (csrc/mh_loss.cpp, csrc/cuda/mh_loss.cu, jwae_ext/ops/hinge.py).
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

  // ---- retrieval: exact retrieval ranks and top-k search (csrc/retrieval.cpp, cuda/retrieval.cu).
  // Ranks and counts come with, per query, the other items tied with its threshold (§3.3: a tie
  // counts against the query).
  m.def(
      "retrieval_ranks(Tensor img_emb, Tensor cap_emb, Tensor cap_to_img) -> (Tensor i2t_ranks, "
      "Tensor t2i_ranks, Tensor i2t_ties, Tensor t2i_ties)");
  m.def(
      "retrieval_thresholds(Tensor img_emb, Tensor cap_emb, Tensor cap_to_img) -> "
      "(Tensor, Tensor)");
  m.def(
      "retrieval_count_at_least(Tensor img_emb, Tensor cap_emb, Tensor cap_to_img, "
      "Tensor img_thresholds, Tensor cap_thresholds) -> (Tensor img_counts, Tensor cap_counts, "
      "Tensor img_ties, Tensor cap_ties)");
  m.def("topk_search(Tensor queries, Tensor gallery, int k) -> (Tensor, Tensor)");

  // ---- linear_cross_entropy: vocabulary projection fused with cross-entropy. For reduction
  // sum/mean the forward also returns the gradients selected by grad_mask (hidden, weight, bias);
  // reduction none uses linear_cross_entropy_backward.
  m.def(
      "linear_cross_entropy(Tensor hidden, Tensor weight, Tensor target, Tensor? bias, "
      "int ignore_index, str reduction, bool[3] grad_mask) -> (Tensor loss, Tensor lse, "
      "Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "linear_cross_entropy_backward(Tensor grad_loss, Tensor hidden, Tensor weight, "
      "Tensor target, Tensor? bias, Tensor lse, int ignore_index, bool[3] grad_mask) -> "
      "(Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)");

  // ---- the jWAE regularizer: wae_loss, discriminator_loss, mmd_imq (a file each). Each returns
  // its value and the gradients of it selected by grad_mask; wae_loss's caption term runs through
  // linear_cross_entropy.
  m.def(
      "wae_loss(Tensor img_feat, Tensor img_rec, Tensor dec_hidden, Tensor vocab_weight, "
      "Tensor targets, Tensor? d_logits_img, Tensor? d_logits_txt, Tensor? vocab_bias, "
      "int batch_size, float[4] weights, str recon, int ignore_index, bool[6] grad_mask) -> "
      "(Tensor total, Tensor terms, Tensor grad_img_rec, Tensor grad_dec_hidden, "
      "Tensor grad_vocab_weight, Tensor grad_vocab_bias, Tensor grad_d_logits_img, "
      "Tensor grad_d_logits_txt)");
  m.def(
      "discriminator_loss(Tensor d_logits_real, Tensor d_logits_fake, bool[2] grad_mask) -> "
      "(Tensor loss, Tensor grad_real, Tensor grad_fake)");
  m.def(
      "mmd_imq(Tensor z, Tensor prior_samples, float[] scales, bool[2] grad_mask) -> "
      "(Tensor mmd, Tensor grad_z, Tensor grad_prior_samples)");

  // ---- xattn: stacked cross-attention (SCAN) scores (csrc/xattn_scores.cpp,
  // csrc/cuda/xattn_scores.cu, jwae_ext/ops/xattn_scores.py). Scores (n_image, n_caption), their
  // gradient for the inputs selected by grad_mask, and exact retrieval ranks from the same tiles
  // (with part/parts: one part's counts of a distributed evaluation, summed over the parts);
  // each image's Gram of its regions, which t2i scores can take precomputed (a search index).
  m.def(
      "xattn_scores(Tensor images, Tensor captions, Tensor cap_lens, str direction, "
      "float lambda_softmax, str agg, float lambda_lse, str raw_feature_norm, "
      "Tensor? region_grams=None) -> Tensor");
  m.def("xattn_region_grams(Tensor images) -> Tensor");
  m.def(
      "xattn_scores_backward(Tensor grad, Tensor images, Tensor captions, Tensor cap_lens, "
      "str direction, float lambda_softmax, str agg, float lambda_lse, str raw_feature_norm, "
      "bool[2] grad_mask) -> (Tensor grad_images, Tensor grad_captions)");
  m.def(
      "xattn_ranks(Tensor images, Tensor captions, Tensor cap_lens, Tensor cap_to_img, "
      "str direction, float lambda_softmax, str agg, float lambda_lse, str raw_feature_norm, "
      "int part=0, int parts=1) -> "
      "(Tensor i2t_ranks, Tensor t2i_ranks, Tensor i2t_ties, Tensor t2i_ties)");
  // end xattn
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
#ifdef JWAE_CUDA_ARCHS  // defined by setup.py: "sm_80,sm_90,..."; unknown to a CMake build
  info["cuda_archs"] = JWAE_CUDA_ARCHS;
#endif
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

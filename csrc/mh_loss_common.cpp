// Max-of-hinges loss: argument checks and the device-generic parts of the backward, shared by the
// CPU (hinge.cpp) and CUDA (cuda/hinge.cu) implementations. See hinge.h.
#include "hinge.h"

#include <cmath>

#include "checks.h"

namespace jwae::hinge {
namespace {

using OptionalIds = std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>>;

OptionalIds check_ids(const std::optional<at::Tensor>& img_ids,
                      const std::optional<at::Tensor>& txt_ids, int64_t batch,
                      const at::Tensor& like, const char* like_name) {
  TORCH_CHECK_VALUE(img_ids.has_value() == txt_ids.has_value(),
                    "jwae_ext: arguments 'img_ids' and 'txt_ids' must be given together, got "
                    "only '",
                    img_ids.has_value() ? "img_ids" : "txt_ids", "'");
  if (!img_ids.has_value()) return {};
  check_index_vector(*img_ids, batch, "img_ids", like_name);
  check_index_vector(*txt_ids, batch, "txt_ids", like_name);
  check_same_device(*img_ids, "img_ids", like, like_name);
  check_same_device(*txt_ids, "txt_ids", like, like_name);
  return {img_ids->contiguous(), txt_ids->contiguous()};
}

// The cost's gradient on queries whose hinge is active (support >= 0), 0 on the others.
at::Tensor active_weight(const at::Tensor& grad, const at::Tensor& hardest, at::ScalarType dtype) {
  return grad.to(dtype).masked_fill(hardest < 0, 0).contiguous();
}

}  // namespace

OptionalIds check_embeddings(const at::Tensor& img_emb, const at::Tensor& txt_emb,
                             const std::optional<at::Tensor>& img_ids,
                             const std::optional<at::Tensor>& txt_ids) {
  check_dim(img_emb, 2, "img_emb", "batch x embedding size");
  check_dim(txt_emb, 2, "txt_emb", "batch x embedding size");
  check_same_device(img_emb, "img_emb", txt_emb, "txt_emb");
  check_float_dtype(img_emb, "img_emb");
  check_float_dtype(txt_emb, "txt_emb");
  check_same_dtype(img_emb, "img_emb", txt_emb, "txt_emb");
  check_nonempty(img_emb, "img_emb");
  check_nonempty(txt_emb, "txt_emb");
  TORCH_CHECK_VALUE(img_emb.size(1) == txt_emb.size(1),
                    "jwae_ext: arguments 'img_emb' and 'txt_emb' must have the same embedding "
                    "size (dim 1), got ",
                    img_emb.size(1), " and ", txt_emb.size(1));
  TORCH_CHECK_VALUE(img_emb.size(0) == txt_emb.size(0),
                    "jwae_ext: arguments 'img_emb' and 'txt_emb' must have the same batch size "
                    "(row i of img_emb is paired with row i of txt_emb), got ",
                    img_emb.size(0), " and ", txt_emb.size(0));
  return check_ids(img_ids, txt_ids, img_emb.size(0), img_emb, "img_emb");
}

OptionalIds check_scores(const at::Tensor& scores, const std::optional<at::Tensor>& img_ids,
                         const std::optional<at::Tensor>& txt_ids) {
  check_dim(scores, 2, "scores", "images x captions");
  check_float_dtype(scores, "scores");
  check_nonempty(scores, "scores");
  TORCH_CHECK_VALUE(scores.size(0) == scores.size(1),
                    "jwae_ext: argument 'scores' must be square (image i is paired with caption "
                    "i), got shape ",
                    scores.sizes());
  return check_ids(img_ids, txt_ids, scores.size(0), scores, "scores");
}

void check_margin(double margin) {
  TORCH_CHECK_VALUE(std::isfinite(margin), "jwae_ext: argument 'margin' must be finite, got ",
                    margin);
}

void check_backward_inputs(const at::Tensor& grad_i2t, const at::Tensor& grad_t2i,
                           const at::Tensor& support_i2t, const at::Tensor& support_t2i,
                           int64_t queries, const at::Tensor& like) {
  for (const auto& [t, name] : {std::pair{&grad_i2t, "grad_i2t"}, {&grad_t2i, "grad_t2i"}}) {
    check_dim(*t, 1, name, "one gradient per query");
    check_float_dtype(*t, name);
    TORCH_CHECK_VALUE(t->size(0) == queries, "jwae_ext: argument '", name, "' must have ",
                      queries, " entries (one per query), got ", t->size(0));
    check_same_device(*t, name, like, "the embeddings or scores");
  }
  check_index_vector(support_i2t, queries, "support_i2t", "img_emb");
  check_index_vector(support_t2i, queries, "support_t2i", "txt_emb");
  check_same_device(support_i2t, "support_i2t", like, "the embeddings or scores");
  check_same_device(support_t2i, "support_t2i", like, "the embeddings or scores");
}

void check_hardest_indices(const at::Tensor& hardest_i2t, const at::Tensor& hardest_t2i) {
  const int64_t batch = hardest_i2t.size(0);
  for (const auto& [t, name] :
       {std::pair{&hardest_i2t, "support_i2t"}, {&hardest_t2i, "support_t2i"}}) {
    const auto [low, high] = at::aminmax(*t);
    TORCH_CHECK_VALUE(low.item<int64_t>() >= -1 && high.item<int64_t>() < batch,
                      "jwae_ext: argument '", name, "' must hold hardest-negative indices in [-1, ",
                      batch, ") as returned by the forward op, got values in [",
                      low.item<int64_t>(), ", ", high.item<int64_t>(), "]");
  }
}

at::ScalarType accumulate_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

Inverse invert(const at::Tensor& hardest) {
  // A stable sort groups the queries by target and keeps each group in increasing query order;
  // queries without a target (-1) sort first. counts[t + 1] = queries targeting t, so the running
  // count at t is where t's group starts. (Integer adds: exact in any order, also on CUDA.)
  const at::Tensor order = at::argsort(hardest, /*stable=*/true);
  const at::Tensor counts = at::zeros({hardest.size(0) + 1}, hardest.options())
                                .index_add_(0, hardest + 1, at::ones_like(hardest));
  return {counts.cumsum(0), order};
}

std::tuple<at::Tensor, at::Tensor> hardest_backward(const at::Tensor& grad_i2t,
                                                    const at::Tensor& grad_t2i,
                                                    const at::Tensor& img_emb,
                                                    const at::Tensor& txt_emb,
                                                    const at::Tensor& hardest_i2t,
                                                    const at::Tensor& hardest_t2i,
                                                    GatherFn gather) {
  const at::Tensor img = img_emb.detach().contiguous();
  const at::Tensor txt = txt_emb.detach().contiguous();
  const at::Tensor hard_i2t = hardest_i2t.contiguous();
  const at::Tensor hard_t2i = hardest_t2i.contiguous();
  const auto dtype = accumulate_dtype(img.scalar_type());
  const at::Tensor w_i2t = active_weight(grad_i2t, hard_i2t, dtype);
  const at::Tensor w_t2i = active_weight(grad_t2i, hard_t2i, dtype);
  return {gather(txt, w_i2t, hard_i2t, w_t2i, invert(hard_t2i)),
          gather(img, w_t2i, hard_t2i, w_i2t, invert(hard_i2t))};
}

at::Tensor positive_grad(const at::Tensor& grad_i2t, const at::Tensor& grad_t2i,
                         const at::Tensor& active_i2t, const at::Tensor& active_t2i,
                         at::ScalarType dtype) {
  return -(grad_i2t.to(dtype) * active_i2t.to(dtype) + grad_t2i.to(dtype) * active_t2i.to(dtype));
}

at::Tensor from_scores_hardest_backward(const at::Tensor& grad_i2t, const at::Tensor& grad_t2i,
                                        const at::Tensor& scores, const at::Tensor& hardest_i2t,
                                        const at::Tensor& hardest_t2i) {
  const int64_t batch = scores.size(0);
  const auto dtype = accumulate_dtype(scores.scalar_type());
  const at::Tensor w_i2t = active_weight(grad_i2t, hardest_i2t, dtype);
  const at::Tensor w_t2i = active_weight(grad_t2i, hardest_t2i, dtype);
  const at::Tensor queries = at::arange(batch, hardest_i2t.options());
  // Inactive queries add their weight (0) onto their own diagonal element, which keeps every
  // index list free of duplicates without a data-dependent (synchronizing) filter.
  const at::Tensor col_i2t = at::where(hardest_i2t >= 0, hardest_i2t, queries);
  const at::Tensor row_t2i = at::where(hardest_t2i >= 0, hardest_t2i, queries);
  at::Tensor grad = at::zeros({batch, batch}, scores.options().dtype(dtype));
  grad.diagonal().copy_(-(w_i2t + w_t2i));
  grad.index_put_({queries, col_i2t}, w_i2t, /*accumulate=*/true);
  grad.index_put_({row_t2i, queries}, w_t2i, /*accumulate=*/true);
  return grad.to(scores.scalar_type());
}

}  // namespace jwae::hinge

// Per-voxel score rules shared by the CPU and CUDA engines (reference.score_maps).
//
// From fold sums S_c (float32, sum over folds f = 0..M-1 in order, starting from 0) and, when
// tracked, the per-fold entropy sum E (float32, same order):
//   mean_c = S_c / float(M)            PE = -(sum_{c=0..C-1} plogp(mean_c))   (sequential over c)
//   mean fold entropy  MFE = E / float(M)
// Score kinds and their K output maps (in this order):
//   kScorePE               1  [PE]
//   kScoreClassPE          n+1 [PE*mean_{classes[0]}, ..., PE*mean_{classes[n-1]}, PE]
//   kScoreBALD             1  [max(PE - MFE, 0)]
//   kScoreExpectedEntropy  1  [MFE]
// A fold contributes softmax(logits) (reference.softmax, expf_portable) or its probabilities as
// given; its entropy is -(sum_c plogp(p_c)).
#pragma once

#include "hd.h"
#include "portable_math.h"

namespace claspe {

enum ScoreKind : int { kScorePE = 0, kScoreClassPE = 1, kScoreBALD = 2, kScoreExpectedEntropy = 3 };

CLASPE_HD bool score_needs_fold_entropy(int kind) { return kind == kScoreBALD || kind == kScoreExpectedEntropy; }

CLASPE_HD float bald_score(float pe, float mfe) {
  const float d = pe - mfe;
  return d > 0.0f ? d : 0.0f;
}

// Bits of the validation flags reported by the fold kernels.
enum CheckFlag : int { kFlagNonFinite = 1, kFlagOutOfRange = 2, kFlagBadSum = 4 };

}  // namespace claspe

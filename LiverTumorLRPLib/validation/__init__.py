"""Are the explanations faithful?  Sanity checks and known-truth tests (``liver-lrp validate``).

Every check explains the same model output as the paper's Sec. 2.3, with T (predicted tumor) and
B (as many predicted-background voxels) fixed from the original prediction:

    f(x) = mean_{a in T} y^1_a(x) + mean_{a in B} y^0_a(x)        (y: class logits)

1. Known truth (:func:`known_truth`): models trained on phantom variants whose tumor contrast lives
   only in some sequences (``liver-lrp train --informative KEY``); sequence relevance must rank those first.
2. Cascading model-parameter randomisation (:func:`randomisation_cascade`, Adebayo et al. 2018): the
   linear layers are re-initialised from the output down; Spearman correlation of the Sec. 2.3 map
   and of its six-sequence vector with the original's, per step.
3. Class sensitivity (:func:`class_sensitivity`): tumor-class vs background-class Eq. 2 maps of T.
4. Sequence ablation and exact Shapley values (:func:`sequence_ablation`, :func:`shapley_values`): a
   sequence is "absent" when replaced by a baseline (zero = the sequence's mean foreground intensity
   after normalisation, its volume mean, or a blurred copy); Shapley values of ``f`` over all 2^6
   subsets, rank-correlated with LRP sequence relevance.
5. Region perturbation (:func:`aopc`, Samek et al. 2017) in 3D: cubes are replaced by zero
   most-relevant-first (MoRF), least-relevant-first (LeRF) and at random; the score is the tumor
   evidence ``g(x) = mean_{a in T} y^1_a`` and AOPC is the mean drop ``g(x0) - g(x_k)`` over the
   first ``fraction`` of cubes, divided by ``|g(x0)|``.  LRP presets (Eq. 2 map of T, tumor class)
   vs gradient x input, integrated gradients and occlusion of ``g``.

Cases are whole phantom volumes (48 x 128 x 128 voxels), as users run the analysis; ``crop`` (e.g.
24 x 64 x 64 voxels around the tumor, ``--crop``) is a named fast mode whose numbers describe crops, not
what users get.  Every rate (known-truth share, share of cases meeting a goal) comes with its 95 % Wilson
interval, and the JSON holds the per-case results.

Modules: :mod:`.cases` (the cases and the explained output), :mod:`.checks` (known truth, randomisation, class
sensitivity, ablation and Shapley values), :mod:`.perturbation` (AOPC), :mod:`.statistics` (intervals),
:mod:`.summary` (what the per-case results say, goals, merging runs), :mod:`.report` (tables, figures, HTML),
:mod:`.suite` (:func:`run_validation`) and :mod:`.cli` (the command: ``add_arguments`` and ``run``, as every
command module of :mod:`LiverTumorLRPLib.cli`).
"""
from __future__ import annotations

from .cases import (VALIDATION_SEED, ValidationCase, crop_around, logits, make_case, phantom_cases, target,
                    tumor_evidence)
from .checks import (RANDOMISATION_STEPS, baseline_image, class_sensitivity, informative_ranked_first, known_truth,
                     linear_layers_in_order, lrp_of_target, lrp_sequence, lrp_tumor_class, randomisation_cascade,
                     sequence_ablation, shapley_check, shapley_values)
from .cli import add_arguments, run
from .perturbation import BASELINE_METHODS, aopc, heatmap, perturbation_curve
from .report import PRESET_COLUMNS, write_report
from .statistics import median_interval, median_with_interval, rate, spearman, wilson_interval
from .suite import AOPC_PRESETS, CHECKS, informative_of, known_truth_check, run_validation
from .summary import GOALS, goal_cell, merge_results, summarise

__all__ = ["run_validation", "wilson_interval", "rate", "shapley_values", "sequence_ablation", "randomisation_cascade",
           "class_sensitivity", "aopc", "known_truth", "informative_ranked_first", "lrp_of_target", "phantom_cases",
           "make_case", "spearman", "median_interval", "median_with_interval", "merge_results", "summarise", "GOALS",
           "goal_cell", "ValidationCase", "VALIDATION_SEED", "CHECKS", "AOPC_PRESETS", "BASELINE_METHODS",
           "RANDOMISATION_STEPS", "PRESET_COLUMNS", "baseline_image", "crop_around", "logits", "target",
           "tumor_evidence", "linear_layers_in_order", "lrp_sequence", "lrp_tumor_class", "shapley_check", "heatmap",
           "perturbation_curve", "informative_of", "known_truth_check", "write_report", "add_arguments", "run"]

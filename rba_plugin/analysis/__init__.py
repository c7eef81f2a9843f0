"""Why RbA does or does not work on a model: analyses of Mask2Former's object queries (RbA
paper Sec. 3.2 and 3.5, Fig. 3, 4, 8, 9).

* :mod:`.specialization`: which class each query predicts with high confidence (Fig. 8);
* :mod:`.masking`: per-class IoU with only each class's specialised query, masked before (hard)
  or after (soft) the transformer decoder (Fig. 3, 9);
* :mod:`.modes`: k-means modes of the per-pixel class scores and which pixels and scores each
  mode holds (Fig. 4);
* :mod:`.votes`: the per-query votes at chosen pixels.

They run on any registered dataset through the plugin's test loader (:mod:`.data`), on a trained
Mask2Former (:mod:`.model`), reading per-query outputs through the transformer decoder's
``keep_queries`` hook (:mod:`.query_outputs`). ``tools/analyze_queries.py`` is the command line;
:mod:`.reports` writes JSON, Markdown and PNG files.
"""
from .data import check_dataset, class_names, dataset_records, ignore_label, labels_of, test_batches
from .masking import MASKING_VARIANTS, MaskingResult, masked_predictions, run_query_masking, specialized_class_scores
from .model import check_query_architecture, load_query_model, set_model_scores
from .modes import (
    CATEGORY_NAMES,
    MODE_NAMES,
    LogitModesResult,
    VoteModes,
    check_mode_settings,
    class_boundary,
    fit_vote_modes,
    mode_patterns,
    pixel_categories,
    run_logit_modes,
    sorted_votes,
)
from .query_outputs import QueryPrediction, QueryRunner, class_scores, mask_probabilities
from .reports import write_logit_modes, write_masking, write_pixel_votes, write_specialization
from .specialization import (
    SpecializationResult,
    check_threshold,
    confident_class_counts,
    run_specialization,
    specialized_queries,
)
from .votes import PixelVotes, check_pixels, find_record, parse_pixel, run_pixel_votes

__all__ = [
    "check_dataset", "class_names", "dataset_records", "ignore_label", "labels_of", "test_batches",
    "MASKING_VARIANTS", "MaskingResult", "masked_predictions", "run_query_masking", "specialized_class_scores",
    "check_query_architecture", "load_query_model", "set_model_scores",
    "CATEGORY_NAMES", "MODE_NAMES", "LogitModesResult", "VoteModes", "check_mode_settings", "class_boundary",
    "fit_vote_modes",
    "mode_patterns", "pixel_categories", "run_logit_modes", "sorted_votes",
    "QueryPrediction", "QueryRunner", "class_scores", "mask_probabilities",
    "write_logit_modes", "write_masking", "write_pixel_votes", "write_specialization",
    "SpecializationResult", "check_threshold", "confident_class_counts", "run_specialization", "specialized_queries",
    "PixelVotes", "check_pixels", "find_record", "parse_pixel", "run_pixel_votes",
]

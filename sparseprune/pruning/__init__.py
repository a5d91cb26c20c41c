"""Pruning engine: select layers, score weights, make masks, keep them while fine-tuning.

:class:`PruneConfig` says what to prune; :class:`Pruner` attaches masks, calibrates,
prunes one-shot or on a :class:`CubicSchedule`, locks optimizers and finalizes.
"""

from .allocate import global_keep
from .calibration import LayerStats
from .config import (LayerSettings, PruneConfig, config_from_dict, config_to_dict,
                     load_config, save_config)
from .locking import lock_optimizer, remove_masks
from .patterns import parse_pattern
from .permutation import (GroupPermutation, PermutationResult, carry_permutation,
                          permute_for_nm, search_permutation)
from .pruner import PRUNABLE, Pruner
from .report import LayerReport, format_table
from .schedule import CubicSchedule
from .sensitivity import (DEFAULT_CANDIDATES, Candidate, Sensitivity, auto_plan, fit_plan,
                          plan_config, sensitivity)
from .sparsegpt import inverse_hessian_factor, sparsegpt_prune

__all__ = [
    "Candidate",
    "DEFAULT_CANDIDATES",
    "Sensitivity",
    "auto_plan",
    "carry_permutation",
    "config_from_dict",
    "config_to_dict",
    "fit_plan",
    "load_config",
    "plan_config",
    "save_config",
    "sensitivity",
    "CubicSchedule",
    "GroupPermutation",
    "PermutationResult",
    "LayerReport",
    "LayerSettings",
    "LayerStats",
    "PRUNABLE",
    "PruneConfig",
    "Pruner",
    "format_table",
    "global_keep",
    "lock_optimizer",
    "parse_pattern",
    "permute_for_nm",
    "search_permutation",
    "remove_masks",
    "sparsegpt_prune",
    "inverse_hessian_factor",
]

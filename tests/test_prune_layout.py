"""The layout of jaxcomp.prune: the axes at the top, three rooms, one public namespace."""

import importlib
import pathlib

import pytest

import jaxcomp.prune as jp

ROOMS = ("compressors", "oneshot", "channels")

# jaxcomp.prune's public names before the rooms existed: none may disappear.
PUBLIC = ["NM", "Block", "Channel", "ChannelGroup", "ChannelPruneResult", "DSTState", "HessianState", "HostScheduled", "LotteryResult", "MagnitudePruningState", "MaskConfig", "MovementPruningState", "ObdPruningState", "ObsLayerStats", "ObsPruneResult", "PruningOptimizerState", "RandomPruningState", "ResetRegrownState", "SaliencyPruningState", "Schedule", "SensitivityTable", "SparsityRow", "SparsitySummary", "SurgeryResult", "Unstructured", "accumulate_hessian", "allocation", "apply_masks", "as_schedule", "block_mask", "bottomk_mask", "channel_dependencies", "channel_lasso", "channel_mask", "check_finite", "constant_schedule", "count_true", "cubic_schedule", "default_where", "depth_lasso", "drop_fraction", "erk_densities", "erk_sparsities", "exact_hessian_diag", "filter_lasso", "fisher_diag", "fixed_mask", "greedy_channel_selection", "group_lasso", "group_norms", "host_scheduled", "hutchinson_diag", "imp_round_masks", "init_hessian", "iterative_schedule", "kth_smallest", "lasso_channel_selection", "layer_hessian", "least_squares_refit", "lottery_ticket", "magnitude_mask", "magnitude_pruning", "masked_weight", "moment_paths", "movement_pruning", "nm_mask", "num_pruned", "obd_pruning", "obs_prune", "obs_remove", "one_shot_schedule", "path_sparsities", "patterns", "polynomial_schedule", "pruning_optimizer", "random_pruning", "random_ticket", "reconstruction_error", "remove_channels", "reset_optimizer_state", "reset_regrown", "rewind", "rigl_pruning", "saliency_pruning", "scale_to_kernel_masks", "schedules", "score_mask", "scores", "sensitivity_scan", "set_pruning", "shape_lasso", "slimming_masks", "slimming_penalty", "slimming_regularizer", "smallest_k_masks", "sparsegpt_prune", "sparsity_summary", "sr_ste_masked_weight", "ssl_regularizer", "ste", "ste_masked_weight", "thinet_prune", "thinet_prune_layer", "threshold", "threshold_mask", "topk_mask", "zero_channels"]


def test_every_public_name_is_still_exported():
    assert len(PUBLIC) == 107
    missing = [n for n in PUBLIC if n not in jp.__all__ or not hasattr(jp, n)]
    assert missing == []
    assert len(jp.__all__) == len(set(jp.__all__))
    assert all(hasattr(jp, n) for n in jp.__all__)


def test_the_folder_shows_the_axes_and_the_rooms():
    root = pathlib.Path(jp.__file__).parent
    top = sorted(p.stem for p in root.glob("*.py") if p.stem != "__init__")
    assert top == ["allocation", "masks", "patterns", "schedules", "scores", "summary"]
    rooms = sorted(p.name for p in root.iterdir() if (p / "__init__.py").exists())
    assert rooms == sorted(ROOMS)


@pytest.mark.parametrize("room", ROOMS)
def test_each_room_reexports_its_names_into_prune(room):
    mod = importlib.import_module(f"jaxcomp.prune.{room}")
    assert getattr(jp, room) is mod and room in jp.__all__
    for name in mod.__all__:
        assert getattr(jp, name) is getattr(mod, name), name
        # defined in a module of this room (or a lower one), never in another room
        where = getattr(getattr(mod, name), "__module__", "") or ""
        assert not any(where.startswith(f"jaxcomp.prune.{r}") for r in ROOMS if r != room), \
            (name, where)

"""Checkpoints that are written atomically, fail readably, and load only what matches.

``SafeCheckpointer`` is Detectron2's ``DetectionCheckpointer`` with three changes:

* ``save`` writes ``model_XXXXXXX.pth`` and ``last_checkpoint`` to a temporary file first and
  renames it, so a run killed mid-save leaves the previous checkpoint intact and never points
  ``last_checkpoint`` at half a file (the hidden temporary it leaves is removed on ``--resume``);
* a missing, truncated or corrupt file, or one that holds no state dict, raises
  :class:`CheckpointReadError` naming the file and what is wrong with it (in every container
  format: ``.pth`` zip or legacy pickle, Detectron2 / Caffe2 ``.pkl``, pycls ``.pyth``), not a
  traceback from inside ``torch.load`` / ``pickle``;
* a checkpoint whose keys or shapes do not match the model raises :class:`CheckpointMismatchError`
  listing the missing, unexpected and differently shaped keys, unless a partial load is allowed.

What counts as a legitimate partial load without asking, only when initialising a model for
training (``allow_new_modules=True``, the trainer's case):

* missing keys (and shape differences) under the prefixes the model lists in its attribute
  ``newly_initialized_prefixes``: modules a fine-tuning method adds on top of a closed-set model
  (e.g. the per-pixel methods' ``ood_method.``), which the base checkpoint cannot hold;
* checkpoints Detectron2 loads by name-matching heuristics (``matching_heuristics``: converted
  ImageNet backbones such as ``R-50.pkl`` or Mask2Former's converted Swin weights), which by design
  hold only a backbone.

Evaluation and the demo (``tools/train_net.py --eval-only``, ``tools/demo.py``) pass
``allow_new_modules=False``: there a checkpoint must cover every module of the model, whatever its
format; an untrained head is an error, not a silent random score. Everything else needs
``MODEL.ALLOW_PARTIAL_LOAD True`` (``allow_partial_load=True``), which restores Detectron2's
behaviour: load what matches and log the rest.
"""
from __future__ import annotations

import logging
import os
import pickle
import zipfile
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import configurable
from fvcore.common.checkpoint import _IncompatibleKeys
from torch import nn

from ..utils.atomic_write import atomic_open

__all__ = ["SafeCheckpointer", "CheckpointReadError", "CheckpointMismatchError", "newly_initialized_prefixes"]

logger = logging.getLogger(__name__)

_MAX_LISTED_KEYS = 40


class CheckpointReadError(RuntimeError):
    """A checkpoint file that cannot be read (truncated, corrupt, not a checkpoint)."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint whose keys or shapes do not match the model, with no partial load allowed."""


def newly_initialized_prefixes(model: nn.Module) -> Tuple[str, ...]:
    """State-dict prefixes of modules ``model`` adds on top of the checkpoint it is initialised
    from (its ``newly_initialized_prefixes`` attribute; none when it has no such attribute)."""
    model = getattr(model, "module", model)  # DDP-wrapped
    return tuple(getattr(model, "newly_initialized_prefixes", ()) or ())


def _check_container(loaded: Any, filename: str, what: str = "it") -> None:
    """Raise :class:`CheckpointReadError` unless ``loaded`` is a dict (of weights or of a
    checkpoint's parts), saying what it is instead."""
    if isinstance(loaded, nn.Module):
        raise CheckpointReadError(
            f"checkpoint {filename}: {what} holds a whole {type(loaded).__name__} model (torch.save(model)), not its "
            "weights; save model.state_dict() (or {'model': model.state_dict()}) instead"
        )
    if not isinstance(loaded, Mapping):
        raise CheckpointReadError(
            f"checkpoint {filename}: {what} holds a {type(loaded).__name__}, not a dict of weights "
            "(a state dict, or a dict with the state dict under 'model')"
        )


def _check_state_dict(state_dict: Any, filename: str) -> None:
    """Raise :class:`CheckpointReadError` unless ``state_dict`` maps names to tensors / arrays."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointReadError(
            f"checkpoint {filename} holds no state dict under 'model' (found a {type(state_dict).__name__})"
        )
    if not state_dict:
        raise CheckpointReadError(f"checkpoint {filename} holds no weights (its state dict is empty)")
    others = [(k, v) for k, v in state_dict.items() if not isinstance(v, (torch.Tensor, np.ndarray))]
    if others:
        listed = ", ".join(f"'{k}' ({type(v).__name__})" for k, v in others[:5])
        nested = [k for k, v in others if isinstance(v, Mapping)]
        hint = (f"; the weights may be nested under {', '.join(repr(k) for k in nested[:3])} (another framework's "
                "layout: a checkpoint holds the state dict itself, or under 'model')") if nested else ""
        raise CheckpointReadError(
            f"checkpoint {filename}: {len(others)} entries of its state dict are not tensors: {listed}{hint}"
        )


def _listed(keys: Sequence[str]) -> str:
    shown = "\n    ".join(keys[:_MAX_LISTED_KEYS])
    more = f"\n    ... and {len(keys) - _MAX_LISTED_KEYS} more" if len(keys) > _MAX_LISTED_KEYS else ""
    return f"    {shown}{more}"


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key.startswith(p) for p in prefixes)


class SafeCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic saves, readable load errors and strict key matching.

    Args:
        model: the model (DDP wrappers are unwrapped by the base class).
        save_dir: where ``save`` writes and ``resume_or_load(resume=True)`` looks.
        allow_partial_load: load the matching part of a checkpoint that does not fully match and
            log the rest (Detectron2's behaviour) instead of raising.
        allow_new_modules: the load initialises a model for training: accept missing keys under
            the model's ``newly_initialized_prefixes`` and backbone-only checkpoints (matching
            heuristics). False for evaluation and the demo: the checkpoint must cover the model.
        owns_save_dir: this checkpointer is the only writer of ``save_dir`` (the training run's):
            ``resume_or_load(resume=True)`` then deletes temporaries an interrupted save left.
            Off for evaluation, which may read the folder of a run that is still saving.
        save_to_disk / checkpointables: as in ``DetectionCheckpointer`` (e.g. ``trainer=``).
    """

    @configurable
    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        allow_partial_load: bool = False,
        allow_new_modules: bool = True,
        owns_save_dir: bool = False,
        save_to_disk: Optional[bool] = None,
        **checkpointables: Any,
    ):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_partial_load = allow_partial_load
        self.allow_new_modules = allow_new_modules
        self.owns_save_dir = owns_save_dir
        self._loading: Optional[str] = None  # file being loaded, for error messages

    @classmethod
    def from_config(cls, cfg, model: nn.Module, save_dir: Optional[str] = None, *, allow_new_modules: bool = True,
                    owns_save_dir: bool = False, **checkpointables: Any) -> Dict:
        return {
            "model": model,
            "save_dir": cfg.OUTPUT_DIR if save_dir is None else save_dir,
            "allow_partial_load": cfg.MODEL.ALLOW_PARTIAL_LOAD,
            "allow_new_modules": allow_new_modules,
            "owns_save_dir": owns_save_dir,
            **checkpointables,
        }

    # ------------------------------------------------------------------ saving

    def _local_save_dir(self) -> bool:
        return "://" not in self.save_dir

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        if not self._local_save_dir():  # remote storage: the path manager's own semantics
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        with atomic_open(save_file, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._local_save_dir():
            return super().tag_last_checkpoint(last_filename_basename)
        with atomic_open(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)

    def _remove_stale_temporaries(self) -> None:
        # A run killed while saving leaves its hidden temporary file behind. Only the owner (the
        # training run's main process) saves there, and it is not saving while it resumes.
        if not os.path.isdir(self.save_dir):
            return
        for name in os.listdir(self.save_dir):
            if name.startswith(".") and name.endswith(".tmp") and (".pth." in name or name.startswith(".last_checkpoint.")):
                os.remove(os.path.join(self.save_dir, name))
                self.logger.info("Removed %s, a checkpoint left half-written by an interrupted run", name)

    # ------------------------------------------------------------------ loading

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        if resume and self.owns_save_dir and self.save_dir and self.save_to_disk and self._local_save_dir():
            self._remove_stale_temporaries()
        return super().resume_or_load(path, resume=resume)

    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        if path and "://" not in path:
            local = path.split("?", 1)[0]  # Detectron2 accepts "file?matching_heuristics=True"
            if os.path.isdir(local):
                raise CheckpointReadError(f"checkpoint {local} is a folder, not a checkpoint file (e.g. its model_final.pth)")
            if not os.path.isfile(local):
                raise FileNotFoundError(f"checkpoint {local} does not exist")
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = None

    def _torch_load(self, f: str) -> Any:
        loaded = super()._torch_load(f)
        _check_container(loaded, f)
        return loaded

    def _load_file(self, filename: str) -> Dict[str, Any]:
        try:
            if filename.endswith(".pkl"):
                loaded = self._load_pkl(filename)
            else:
                loaded = super()._load_file(filename)
        except CheckpointReadError:
            raise
        except pickle.UnpicklingError as error:
            if "Weights only load failed" in str(error):  # torch.load(weights_only=True) refused it
                raise CheckpointReadError(
                    f"cannot read checkpoint {filename}: it holds Python objects besides tensors and plain "
                    "containers (e.g. a whole model saved with torch.save(model)), which torch.load does not "
                    "unpickle; save model.state_dict() (or {'model': model.state_dict()}) instead"
                ) from error
            raise CheckpointReadError(
                f"cannot read checkpoint {filename}: it is truncated, corrupt or not a checkpoint "
                f"({type(error).__name__}: {error})"
            ) from error
        except (EOFError, zipfile.BadZipFile, UnicodeDecodeError, ValueError, RuntimeError, AttributeError,
                ImportError, IndexError, KeyError, TypeError, AssertionError, OSError) as error:
            raise CheckpointReadError(
                f"cannot read checkpoint {filename}: it is truncated, corrupt or not a checkpoint "
                f"({type(error).__name__}: {error})"
            ) from error
        _check_state_dict(loaded.get("model"), filename)
        return loaded

    def _load_pkl(self, filename: str) -> Dict[str, Any]:
        """Detectron2's ``.pkl`` reading (its model-zoo format, or Caffe2 / Detectron1 blobs loaded
        by matching heuristics), with the container checked before it is used."""
        with open(filename, "rb") as f:
            data = pickle.load(f, encoding="latin1")
        _check_container(data, filename)
        if "model" in data and "__author__" in data:  # Detectron2's model-zoo format
            self.logger.info("Reading a file from '%s'", data["__author__"])
            return data
        if "blobs" in data:  # detection models of the Caffe2 zoo; ImageNet ones are plain dicts
            data = data["blobs"]
            _check_container(data, filename, "its 'blobs'")
        data = {k: v for k, v in data.items() if not str(k).endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}

    def _load_model(self, checkpoint: Any) -> _IncompatibleKeys:
        backbone_only = bool(checkpoint.get("matching_heuristics", False))
        try:
            incompatible = super()._load_model(checkpoint)
        except (ValueError, KeyError, AssertionError) as error:  # e.g. ambiguous name matching
            raise CheckpointMismatchError(
                f"checkpoint {self._loading} cannot be matched to the model: {type(error).__name__}: {error}"
            ) from error
        refused = self._refused(incompatible, backbone_only)
        if refused is not None and not self.allow_partial_load:
            missing, unexpected, shapes = refused
            parts = [f"checkpoint {self._loading} does not match the model:"]
            if missing:
                parts.append(f"  missing in the checkpoint ({len(missing)}):\n{_listed(missing)}")
            if unexpected:
                parts.append(f"  unexpected in the checkpoint ({len(unexpected)}):\n{_listed(unexpected)}")
            if shapes:
                rows = [f"{k}: {tuple(c)} in the checkpoint, {tuple(m)} in the model" for k, c, m in shapes]
                parts.append(f"  different shapes ({len(shapes)}):\n{_listed(rows)}")
            if backbone_only and missing:
                parts.append(
                    "It is a backbone-only checkpoint (loaded by Detectron2's name matching, e.g. an ImageNet "
                    ".pkl): it initialises training, but evaluation and the demo need a trained model's "
                    "checkpoint covering every module."
                )
            parts.append("Set MODEL.ALLOW_PARTIAL_LOAD True to load the matching part anyway.")
            raise CheckpointMismatchError("\n".join(parts))
        return incompatible

    def _refused(
        self, incompatible: _IncompatibleKeys, backbone_only: bool
    ) -> Optional[Tuple[List[str], List[str], List[tuple]]]:
        """The (missing, unexpected, shape) differences no rule allows; None when there are none.
        Only a load for training (``allow_new_modules``) excuses new modules and the heads a
        backbone-only checkpoint lacks."""
        new = newly_initialized_prefixes(self.model) if self.allow_new_modules else ()
        excuse_heads = backbone_only and self.allow_new_modules
        missing = [] if excuse_heads else [k for k in incompatible.missing_keys if not _under(k, new)]
        unexpected = list(incompatible.unexpected_keys)
        shapes = [s for s in incompatible.incorrect_shapes if not _under(s[0], new)]
        if missing or unexpected or shapes:
            return missing, unexpected, shapes
        if incompatible.missing_keys or incompatible.incorrect_shapes:
            logger.info("Initialised from scratch (not in %s): %d keys under %s", self._loading,
                        len(incompatible.missing_keys) + len(incompatible.incorrect_shapes),
                        ", ".join(new) or "the heads of a backbone-only checkpoint")
        return None

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

Checkpoints of the official code bases load as they were released:

* containers: a dict with the weights under ``model`` (Detectron2, PEBAL, RPL, DenseHybrid's
  training), ``state_dict`` (NVIDIA's WideResNet-38 checkpoints) or ``model_state`` (RAML /
  VainF), a bare state dict (DenseHybrid's released weights), with optimizer state and
  counters alongside (not loaded); numpy scalars among the counters are accepted;
* keys: a model may declare ``adapt_checkpoint(state_dict, fill_new_modules) -> (state_dict,
  notes)``, which renames an official layout to its own (wrapper prefixes such as ``module.`` or
  ``branch1.`` removed, official module names moved under the model's parts) and, when
  initialising for training, adds what a base checkpoint lacks; every change is logged with the
  file name. Loading then stays strict: what still differs raises
  :class:`CheckpointMismatchError` naming the file and the keys.
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

# Prefixes of this plugin's earlier checkpoints -> where the module lives now (loaded renamed, with
# a log line): DenseHybrid's head moved into the transformer decoder under RbA's key (0.3).
# RPL's residual block took the official name (0.4).
RENAMED_PREFIXES = {
    "sem_seg_head.outlier_head.": "sem_seg_head.predictor.ood_pred.",
    "ood_method.residual.": "ood_method.residual_block.",
}

# Entries official checkpoints keep their weights under (Detectron2 and PEBAL / RPL: "model";
# NVIDIA's semantic-segmentation: "state_dict"; RAML / VainF's DeepLabV3+: "model_state").
STATE_DICT_ENTRIES = ("model", "state_dict", "model_state")


def _numpy_scalar_globals() -> List[Any]:
    """What unpickling numpy scalars and dtypes needs (official checkpoints store e.g. the best
    validation score as a numpy float next to the weights); nothing here runs code."""
    scalar = getattr(getattr(np, "core", None), "multiarray", None)  # numpy 1.x
    if scalar is None or not hasattr(scalar, "scalar"):
        scalar = np._core.multiarray  # numpy 2
    found = [scalar.scalar, np.dtype]
    found += [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    return found


class CheckpointReadError(RuntimeError):
    """A checkpoint file that cannot be read (truncated, corrupt, not a checkpoint)."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint whose keys or shapes do not match the model, with no partial load allowed."""


def newly_initialized_prefixes(model: nn.Module) -> Tuple[str, ...]:
    """State-dict prefixes of modules ``model`` adds on top of the checkpoint it is initialised
    from (its ``newly_initialized_prefixes`` attribute; none when it has no such attribute)."""
    model = getattr(model, "module", model)  # DDP-wrapped
    return tuple(getattr(model, "newly_initialized_prefixes", ()) or ())


def _renamed(state: Dict[str, Any], source: Optional[str]) -> Dict[str, Any]:
    """``state`` with the keys under :data:`RENAMED_PREFIXES` moved to their current prefix."""
    moved = {}
    for key in state:
        for old, new in RENAMED_PREFIXES.items():
            if key.startswith(old):
                moved[key] = new + key[len(old):]
    if not moved:
        return state
    logger.info("%s: %d keys of an earlier layout renamed (%s)", source, len(moved),
                ", ".join(f"{o}* -> {n}*" for o, n in RENAMED_PREFIXES.items()))
    return {moved.get(k, k): v for k, v in state.items()}


def _tensors_only(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(torch.is_tensor(v) or isinstance(v, np.ndarray)
                                                           for v in value.values())


def _state_dict_of(loaded: Dict[str, Any], source: Optional[str]) -> Dict[str, Any]:
    """``loaded`` with its weights under ``model``: a container whose ``model`` holds no tensor
    but one of :data:`STATE_DICT_ENTRIES` is unwrapped (Detectron2 puts a file without a
    ``model`` entry, e.g. ``{"state_dict": ...}``, under ``model`` as a whole). Other entries of
    that container that are state dicts too (RAML keeps its metric head apart, ``metric_model``)
    join it under their entry name (``metric_model.model.0.weight``); optimizer and scheduler
    states and counters are not loaded."""
    inner = loaded.get("model")
    while isinstance(inner, dict) and not any(torch.is_tensor(v) or isinstance(v, np.ndarray) for v in inner.values()):
        entry = next((e for e in STATE_DICT_ENTRIES if isinstance(inner.get(e), dict)), None)
        if entry is None:
            break
        extra = sorted(str(k) for k, v in inner.items() if k != entry and _tensors_only(v))
        others = sorted(str(k) for k in inner if k != entry and str(k) not in extra)
        logger.info("%s: weights read from its entry '%s'%s%s", source, entry,
                    f", with the entries {', '.join(extra)} as <entry>.*" if extra else "",
                    f" (not loaded: {', '.join(others)})" if others else "")
        merged = dict(inner[entry])
        for name in extra:
            merged.update({f"{name}.{k}": v for k, v in inner[name].items()})
        inner = merged
    loaded["model"] = inner
    return loaded


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
            if not os.path.isfile(local):
                if os.path.isdir(local):
                    raise CheckpointReadError(f"checkpoint {local} is a folder, not a checkpoint file (e.g. its model_final.pth)")
                raise FileNotFoundError(f"checkpoint {local} does not exist")
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = None

    def _torch_load(self, f: str) -> Any:
        try:
            loaded = super()._torch_load(f)
        except pickle.UnpicklingError:
            # torch.load reads only weights and plain containers; official checkpoints may also
            # hold numpy scalars, which are data too. Anything else is still refused.
            with torch.serialization.safe_globals(_numpy_scalar_globals()):
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
            # torch.load(weights_only=True) refused a class it would have to import (a pickled
            # object); any other refusal (e.g. "Unsupported operand") means the bytes are no pickle.
            if "Weights only load failed" in str(error) and "Unsupported global" in str(error):
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
        loaded = _state_dict_of(loaded, filename)
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
        checkpoint["model"] = _renamed(checkpoint["model"], self._loading)
        adapt = getattr(getattr(self.model, "module", self.model), "adapt_checkpoint", None)
        if callable(adapt) and not backbone_only:
            try:
                checkpoint["model"], notes = adapt(checkpoint["model"], fill_new_modules=self.allow_new_modules)
            except ValueError as error:
                raise CheckpointMismatchError(f"checkpoint {self._loading}: {error}") from error
            for note in notes:
                logger.info("%s: %s", self._loading, note)
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
        # A backbone-only checkpoint matched by names (an ImageNet classifier) keeps its classifier.
        unexpected = [] if backbone_only else list(incompatible.unexpected_keys)
        if backbone_only and incompatible.unexpected_keys:
            logger.info("Not used (no place in the model): %d keys of %s, e.g. %s", len(incompatible.unexpected_keys),
                        self._loading, ", ".join(incompatible.unexpected_keys[:3]))
        shapes = [s for s in incompatible.incorrect_shapes if not _under(s[0], new)]
        if missing or unexpected or shapes:
            return missing, unexpected, shapes
        if incompatible.missing_keys or incompatible.incorrect_shapes:
            logger.info("Initialised from scratch (not in %s): %d keys under %s", self._loading,
                        len(incompatible.missing_keys) + len(incompatible.incorrect_shapes),
                        ", ".join(new) or "the heads of a backbone-only checkpoint")
        return None

"""Official checkpoints of the networks a model is built from, renamed to the model's keys.

A model composed of parts (``backbone``, ``sem_seg_head``, ``ood_method``) holds each official
module under the official module names, one level down: PEBAL's ``branch1.mod1.conv1.weight``
is our ``backbone.mod1.conv1.weight``, RPL's ``branch1.residual_block.atten_aspp...`` our
``ood_method.residual_block.atten_aspp...``, RAML's ``classifier.aspp...`` our
``sem_seg_head.aspp...``. Each part declares where its keys sit in the official checkpoints of its
network (attribute ``official_key_prefix``: ``""`` for the top level, ``"classifier."`` for RAML's
head, or a dict from prefixes of the part's own keys to official prefixes for parts kept under
other names, e.g. RAML's metric head in the checkpoint's ``metric_model`` entry; no attribute: the
part has no official checkpoint of its own) and the wrapper prefixes those
checkpoints carry (``official_key_wrappers``: ``module.`` of DataParallel, ``branch1.`` of PEBAL's
and RPL's ``Network``), and entries the official loaders drop (``official_unused_keys``: NVIDIA's
checkpoints keep the training loss's class weights, ``criterion.nll_loss.weight``, which PEBAL's
and RPL's ``load_model`` skip). :class:`OfficialKeyLayout` derives the renaming from the model's own keys,
so it cannot drift from the modules.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Tuple, TypeVar

from torch import nn

__all__ = ["OfficialKeyLayout"]

T = TypeVar("T")


@dataclass(frozen=True)
class OfficialKeyLayout:
    """Official key (wrappers removed) -> model key, and the wrappers to remove.

    Attributes:
        names: official key -> the model's key.
        wrappers: prefixes official checkpoints put around the keys, removed in any order and
            number (``module.branch1.`` and ``branch1.module.`` both unwrap).
        unused: prefixes of official keys (unwrapped) that have no place in the model and that
            the official loaders drop too.
    """

    names: Mapping[str, str]
    wrappers: Tuple[str, ...]
    unused: Tuple[str, ...] = ()

    @classmethod
    def of(cls, parts: Mapping[str, nn.Module]) -> "OfficialKeyLayout":
        """The layout of a model whose attribute ``name`` holds ``parts[name]``.

        Raises:
            ValueError: if two keys of the model have the same official name.
        """
        names: Dict[str, str] = {}
        wrappers: List[str] = []
        unused: List[str] = []
        for attr, part in parts.items():
            prefix = getattr(part, "official_key_prefix", None)
            if prefix is None:
                continue
            renames = prefix if isinstance(prefix, Mapping) else {"": prefix}
            wrappers += [w for w in getattr(part, "official_key_wrappers", ()) if w not in wrappers]
            unused += [u for u in getattr(part, "official_unused_keys", ()) if u not in unused]
            for key in part.state_dict():
                own = next((p for p in renames if key.startswith(p)), None)
                if own is None:
                    continue  # no official counterpart (e.g. RAML's prototypes)
                official = renames[own] + key[len(own):]
                if official in names:
                    raise ValueError(f"official key {official!r} names both {names[official]!r} and {attr}.{key!r}")
                names[official] = f"{attr}.{key}"
        return cls(names, tuple(wrappers), tuple(unused))

    def unwrap(self, key: str) -> Tuple[str, List[str]]:
        """``key`` without its wrapper prefixes, and the wrappers removed (in order)."""
        removed: List[str] = []
        stripped = True
        while stripped:
            stripped = False
            for wrapper in self.wrappers:
                if key.startswith(wrapper):
                    key, stripped = key[len(wrapper):], True
                    removed.append(wrapper)
        return key, removed

    def apply(self, state_dict: Mapping[str, T], model_keys: Iterable[str]) -> Tuple[Dict[str, T], List[str]]:
        """``state_dict`` in the model's key layout, and what was changed (for the log).

        A key the model has stays. Any other key is unwrapped and then kept if the model has it
        (a wrapped checkpoint of the model itself), renamed if it is an official name, or dropped
        if it is under ``unused``; keys that are none of these stay as they are, for the loader
        to report.

        Raises:
            ValueError: if two checkpoint keys land on the same model key, naming both.
        """
        model_keys = set(model_keys)
        out: Dict[str, T] = {}
        source: Dict[str, str] = {}
        unwrapped = renamed = 0
        wrappers_seen: List[str] = []
        dropped: List[str] = []
        example = ""
        for key, value in state_dict.items():
            new = key
            if key not in model_keys:
                inner, removed = self.unwrap(key)
                if inner not in model_keys and inner.startswith(self.unused):
                    dropped.append(key)
                    continue
                if inner in model_keys:
                    new = inner
                elif inner in self.names:
                    new = self.names[inner]
                    renamed += 1
                    example = example or f"{key!r} -> {new!r}"
                if new != key and removed:
                    unwrapped += 1
                    wrappers_seen += [w for w in removed if w not in wrappers_seen]
            if new in out:
                raise ValueError(f"checkpoint keys {source[new]!r} and {key!r} both load into {new!r}")
            out[new], source[new] = value, key
        notes = []
        if unwrapped:
            notes.append(f"removed the wrapper prefix(es) {', '.join(map(repr, wrappers_seen))} of {unwrapped} keys")
        if renamed:
            notes.append(f"renamed {renamed} official keys to the model's (e.g. {example})")
        if dropped:
            notes.append(f"dropped {len(dropped)} keys the official loaders drop too ({', '.join(dropped[:3])})")
        return out, notes

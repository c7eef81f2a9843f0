"""No config key is silently ignored: every key the plugin adds is read by some code (tools
included) or declared as accepted for compatibility; every declared rule names an existing key;
every default passes the rules and so does every shipped config."""
import ast
import glob
from pathlib import Path
from typing import Iterator, List, Set, Tuple

import pytest
from detectron2.config import CfgNode
from detectron2.config import get_cfg as detectron2_get_cfg
from detectron2.projects.deeplab import add_deeplab_config

from rba_plugin.config import check_config, compatibility_keys, get_cfg, key_rules

from .conftest import REPO_ROOT


def _flat_keys(cfg: CfgNode, prefix: str = "") -> Iterator[str]:
    for name, value in cfg.items():
        if isinstance(value, CfgNode):
            yield from _flat_keys(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def plugin_keys() -> List[str]:
    """Keys get_cfg() has beyond Detectron2's defaults and its DeepLab project's."""
    base = detectron2_get_cfg()
    add_deeplab_config(base)
    return sorted(set(_flat_keys(get_cfg())) - set(_flat_keys(base)))


def _upper(name: str) -> bool:
    return name == name.upper() and any(c.isalpha() for c in name)


def _chain(node) -> Tuple[str, Tuple[str, ...]]:
    """(root variable, upper-case attribute names) of an attribute expression (the root is "cfg"
    for ``self.cfg.MODEL...``)."""
    parts = []
    current = node
    while isinstance(current, ast.Attribute) and _upper(current.attr):
        parts.append(current.attr)
        current = current.value
    if isinstance(current, ast.Attribute) and current.attr in ("cfg", "config"):  # self.cfg.MODEL...
        return "cfg", tuple(reversed(parts))
    return (current.id if isinstance(current, ast.Name) else ""), tuple(reversed(parts))


def read_chains() -> Set[Tuple[bool, Tuple[str, ...]]]:
    """Upper-case attribute chains read (Load context) in the plugin and its tools, each with
    whether it is a whole key: read from a config (``cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES``) or
    from a variable holding a group of it (``mf = cfg.MODEL.MASK_FORMER`` ... ``mf.TEST.SEMANTIC_ON``),
    or only the end of one (a group passed in as an argument). Assignments (the groups'
    defaults) and strings (rules, messages) do not count."""
    chains = set()
    files = sorted((REPO_ROOT / "rba_plugin").rglob("*.py")) + sorted((REPO_ROOT / "tools").rglob("*.py"))
    for path in files:
        tree = ast.parse(path.read_text())
        aliases = {}  # variable -> the config groups it is assigned from, in this file
        for node in ast.walk(tree):
            if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                    and isinstance(node.value, ast.Attribute)):
                root, parts = _chain(node.value)
                if root in ("cfg", "config") and parts:
                    aliases.setdefault(node.targets[0].id, set()).add(parts)
        # The outermost upper-case attribute of each chain (``cfg.A.B`` in ``cfg.A.B.copy()`` too).
        inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute) and _upper(node.attr)}
        for node in ast.walk(tree):
            if (not isinstance(node, ast.Attribute) or not _upper(node.attr) or id(node) in inner
                    or not isinstance(node.ctx, ast.Load)):
                continue
            root, parts = _chain(node)
            if not parts:
                continue
            if root in ("cfg", "config"):
                chains.add((True, parts))
            elif root in aliases:
                chains.update((True, group + parts) for group in aliases[root])
            else:
                chains.add((False, parts))
    return chains


def form_bundle_reads() -> Set[Tuple[bool, Tuple[str, ...]]]:
    """Keys read by name through a FORM bundle (``loss_terms.base.resolve_form`` reads every key
    of its group's bundles), as whole-key chains."""
    from rba_plugin.modeling.loss_terms.raml import MCA_FORMS, RAML_FORMS

    return {(True, ("MODEL", group, key)) for group, forms in (("MCA", MCA_FORMS), ("RAML", RAML_FORMS))
            for bundle in forms.values() for key in bundle}


def is_read(key: str, chains) -> bool:
    """Whether a chain read from a config is the key, or a chain read from a group ends it."""
    parts = tuple(key.split("."))
    return any(chain == parts if anchored else parts[-len(chain):] == chain for anchored, chain in chains)


def _compatible(key: str, accepted) -> bool:
    return any(key == c or (c.endswith(".") and key.startswith(c)) for c in accepted)


def test_the_walk_sees_reads_and_not_assignments():
    chains = read_chains()
    assert is_read("MODEL.SEM_SEG_HEAD.NUM_CLASSES", chains)
    assert is_read("MODEL.MASK_FORMER.TEST.SEMANTIC_ON", chains)  # read as mf.TEST.SEMANTIC_ON
    assert not is_read("MODEL.MVIT.ADAPTIVE_KV_STRIDE", chains)  # only ever assigned


def test_every_plugin_key_is_read_or_accepted_for_compatibility():
    chains = read_chains() | form_bundle_reads()
    accepted = compatibility_keys()
    unread = [k for k in plugin_keys() if not is_read(k, chains) and not _compatible(k, accepted)]
    assert not unread, f"config keys nothing reads (read them, or declare them with accept_for_compatibility): {unread}"
    # ... and the compatibility list holds keys that exist and nothing acts on.
    keys = plugin_keys()
    for entry in accepted:
        assert any(k == entry or (entry.endswith(".") and k.startswith(entry)) for k in keys), entry
    acted_on = [k for k in keys if _compatible(k, accepted) and is_read(k, chains)]
    assert not acted_on, f"keys declared inert that code reads: {acted_on}"


def test_every_rule_names_an_existing_key_and_the_defaults_pass():
    cfg = get_cfg()
    keys = set(_flat_keys(cfg))
    assert not [k for k in key_rules() if k not in keys]
    check_config(cfg)


@pytest.mark.parametrize("config", sorted(glob.glob(str(REPO_ROOT / "configs" / "**" / "*.yaml"), recursive=True)),
                         ids=lambda p: str(Path(p).relative_to(REPO_ROOT / "configs")))
def test_every_shipped_config_passes_the_rules(config):
    cfg = get_cfg()
    cfg.merge_from_file(config)
    check_config(cfg)
    # ... and sets no key that nothing acts on (that would be a warning on every run).
    defaults, accepted = get_cfg(), compatibility_keys()
    inert = [k for k in _flat_keys(cfg) if _compatible(k, accepted) and _value(cfg, k) != _value(defaults, k)]
    assert not inert, inert


def _value(cfg: CfgNode, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg

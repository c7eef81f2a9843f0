"""The plugin's config accepts Mask2Former's and RbA's configs, and rejects unknown keys."""
import glob

import pytest
import yaml
from detectron2.config import CfgNode

from rba_plugin.config import get_cfg

from .conftest import REFERENCE_DIR, REPO_ROOT
from .m2f_build import build_on, load_fixture

RELEASE_CONFIGS = sorted(glob.glob(str(REFERENCE_DIR / "rba_release_configs" / "*.yaml")))
# Mask2Former configs; the per-pixel branch's configs/pixel/ are tested in test_pixel_configs.py.
OUR_CONFIGS = sorted(
    p
    for p in glob.glob(str(REPO_ROOT / "configs" / "**" / "*.yaml"), recursive=True)
    if "/Base-" not in p and "/pixel/" not in p
)


def _flatten(node, prefix=""):
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_there_are_release_configs():
    assert len(RELEASE_CONFIGS) == 5


@pytest.mark.parametrize("path", RELEASE_CONFIGS, ids=lambda p: p.rsplit("/", 1)[-1])
def test_release_config_merges_and_round_trips(path):
    cfg = get_cfg()
    cfg.merge_from_file(path)
    dumped = _flatten(yaml.safe_load(open(path)))
    ours = _flatten(yaml.safe_load(cfg.dump()))
    # Every value of RbA's dump survives the merge unchanged (types included: None, bools, lists).
    differing = {k: (v, ours.get(k)) for k, v in dumped.items() if _norm(ours.get(k)) != _norm(v)}
    assert differing == {}


def _norm(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("name", ["m2f_swin_micro_rba_seed7.pt", "m2f_swin_micro_3level_seed11.pt"])
def test_fixture_config_merges(reference_dir, name):
    fixture = load_fixture(reference_dir / name)
    cfg = get_cfg()
    cfg.merge_from_other_cfg(CfgNode.load_cfg(fixture["config_yaml"]))
    cfg.merge_from_list(list(fixture["overrides"]))
    assert cfg.MODEL.META_ARCHITECTURE == "MaskFormer"


def test_rba_defaults():
    # RbA's defaults (RbA mask2former/config.py), which its configs rely on.
    mf = get_cfg().MODEL.MASK_FORMER
    assert mf.OUTLIER_SUPERVISION is False
    assert mf.OUTLIER_LOSS_TARGET == "none" and mf.SCORE_NORM == "none"
    assert mf.OUTLIER_LOSS_FUNC == "squared_hinge"  # RbA sets "max", then overwrites it
    assert (mf.INLIER_UPPER_THRESHOLD, mf.OUTLIER_LOWER_THRESHOLD, mf.OUTLIER_WEIGHT) == (-1.0, -0.1, 1.0)
    assert mf.MATCHER == "HungarianMatcher"


@pytest.mark.parametrize("path", OUR_CONFIGS, ids=lambda p: p.split("configs/", 1)[-1])
def test_our_configs_merge_and_build(path):
    cfg = get_cfg()
    cfg.merge_from_file(path)
    model = build_on(cfg, "meta")
    head = model.sem_seg_head
    assert head.num_classes == 19
    assert head.predictor.num_layers == cfg.MODEL.MASK_FORMER.DEC_LAYERS - 1
    assert head.predictor.num_feature_levels == len(cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES)


def test_unknown_key_in_file_names_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("MODEL:\n  MASK_FORMER:\n    NUM_OBJECT_QUERYS: 50\n")
    with pytest.raises(KeyError, match=r"MODEL\.MASK_FORMER\.NUM_OBJECT_QUERYS"):
        get_cfg().merge_from_file(str(path))


def test_unknown_key_on_command_line_names_the_key():
    # yacs raises an AssertionError here (a KeyError for files); both name the key.
    with pytest.raises((KeyError, AssertionError), match=r"MODEL\.SWIN\.EMBED_DIMS"):
        get_cfg().merge_from_list(["MODEL.SWIN.EMBED_DIMS", "96"])


def test_bad_decoder_name_names_the_key():
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO_ROOT / "configs/synthcity/mask2former/maskformer2_swin_micro_1dl.yaml"))
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "NoSuchDecoder"
    with pytest.raises(KeyError, match="TRANSFORMER_DECODER_NAME.*NoSuchDecoder"):
        build_on(cfg, "meta")


def test_encoder_level_not_among_inputs_names_the_key():
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO_ROOT / "configs/synthcity/mask2former/maskformer2_swin_micro_1dl.yaml"))
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res6"]
    with pytest.raises(ValueError, match="DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES.*res6"):
        build_on(cfg, "meta")


def test_rba_options_not_acted_on_are_refused(reference_dir):
    from rba_plugin.config import check_config

    cfg = get_cfg()
    cfg.merge_from_file(str(reference_dir / "rba_release_configs/swin_b_1dl.yaml"))
    check_config(cfg)
    cfg.merge_from_file(str(reference_dir / "rba_release_configs/swin_b_1dl_rba_ood_coco.yaml"))
    check_config(cfg)  # outlier supervision and freezing are wired
    build_on(cfg, "meta")
    augmented = cfg.clone()
    augmented.merge_from_list(["TEST.AUG.ENABLED", "True"])
    with pytest.raises(ValueError, match="TEST.AUG.ENABLED = True: test-time augmentation is not implemented"):
        build_on(augmented, "meta")  # whatever the mode: the model refuses
    for key in ("MODEL.MASK_FORMER.USE_POINT_REND", "SOLVER.FORCE_REGION_PARTITION"):
        ablation = cfg.clone()
        ablation.merge_from_list([key, "True"])
        with pytest.raises(NotImplementedError, match=f"{key}=True"):  # whatever the mode: the model refuses
            build_on(ablation, "meta")


def test_unknown_mapper_name_is_named():
    from rba_plugin.data.dataset_mappers import build_train_mapper

    cfg = get_cfg()
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic_coco_mixx"
    with pytest.raises(KeyError, match="DATASET_MAPPER_NAME.*mask_former_semantic_coco_mixx"):
        build_train_mapper(cfg)


def test_evaluator_follows_metadata(tmp_path):
    from detectron2.data import MetadataCatalog
    from detectron2.evaluation import SemSegEvaluator

    from rba_plugin.engine import build_evaluator

    from .m2f_scenes import register_scenes

    name = register_scenes(tmp_path, count=1, height=32, width=64)
    assert isinstance(build_evaluator(get_cfg(), name, str(tmp_path / "eval")), SemSegEvaluator)
    other = f"{name}_coco"
    MetadataCatalog.get(other).evaluator_type = "coco"
    with pytest.raises(NotImplementedError, match=f"{other}.*coco"):
        build_evaluator(get_cfg(), other)

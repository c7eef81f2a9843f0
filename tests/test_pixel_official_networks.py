"""The official per-pixel networks, built as ``PixelOODSegmentor`` from the shipped configs
(``configs/cityscapes/pixel/``), reproduce the official code (../shared/reference/pixel_official,
seed 3): the official state-dict keys and shapes through the model's key mapping, strict loading
of the fixture recipe weights, and the official outputs, intermediates and anomaly scores through
the segmentor's inference path (its registered scores included), at any input size."""
from __future__ import annotations

from typing import Dict

import pytest
import torch

from rba_plugin.modeling.pixel import DeepWV3PlusHead

from .pixel_official import CASES, checksums, image_input, load_official, read_key_table, recipe_state_dict, rel_error

REL_TOL = 1e-4
# Fixture intermediate -> (module in the segmentor, channel step of the fixture's copy).
INTERMEDIATES = {
    "mod2": ("backbone.mod2", 8),
    "mod7": ("backbone.mod7", 32),
    "aspp": ("sem_seg_head.aspp", 8),
    "residual_atten_aspp": ("ood_method.residual_block.atten_aspp", 8),
    "layer1": ("backbone.layer1", 8),
    "layer4": ("backbone.layer4", 16),
}
# Parameters of the official model (RAML: without its metric model, saved apart).
PARAMETERS = {"pebal": 137_104_192, "rpl": 167_998_832, "densehybrid": 137_105_154, "raml16": 58_753_028,
              "raml19": 58_753_859}


class OfficialRun:
    """One network built once from its config, recipe weights loaded strictly, the fixture image
    run through ``model(batched_inputs)`` with hooks on the input, intermediates and the method."""

    def __init__(self, reference_dir, test_id: str):
        case = CASES[test_id]
        self.test_id = test_id
        self.fixture = case.fixture(reference_dir)
        self.recipe = recipe_state_dict(case.tsv(reference_dir), self.fixture["seed"])
        self.model = case.build()
        load_official(self.model, self.recipe, ("ood_method.",) if test_id.startswith("raml") else ())
        self.model.eval()
        modules = dict(self.model.named_modules())
        self.captured: Dict[str, object] = {}
        first = self.model.backbone.mod1 if hasattr(self.model.backbone, "mod1") else self.model.backbone.conv1
        handles = [
            first.register_forward_pre_hook(
                lambda _m, args: self.captured.__setitem__("network_input", args[0].clone())
            ),
            self.model.ood_method.register_forward_hook(
                lambda _m, args, out: self.captured.update(method_args=args, method_outputs=out)
            ),
        ]
        for key in self.fixture["intermediates"]:
            path, step = INTERMEDIATES[key]
            handles.append(modules[path].register_forward_hook(
                lambda _m, _a, out, key=key, step=step: self.captured.__setitem__(key, out[:, ::step].clone())
            ))
        with torch.no_grad():
            self.result = self.model(image_input(self.fixture["image"]))[0]
        for handle in handles:
            handle.remove()

    def outputs(self) -> Dict[str, torch.Tensor]:
        """Ours, under the fixture's names (batch dimension as the fixture's)."""
        method = self.captured["method_outputs"]
        out = {"sem_seg": self.result["sem_seg"][None], "anomaly_score": self.result["ood_score"]}
        head, _features, dec_in, images = self.captured["method_args"]
        size = images.tensor.shape[-2:]
        if self.test_id == "pebal":
            with torch.no_grad():
                out["logits"] = self.model.ood_method.logits(head, dec_in, size)
        elif self.test_id == "rpl":
            out["logits_rpl"] = method["class_scores"]
        elif self.test_id == "densehybrid":
            out["logits_ood"] = method["outlier_logits"]
            out["anomaly_score"] = out["anomaly_score"][None]
        else:  # RAML: the official outputs 2-4 (its anomaly score was never released)
            with torch.no_grad():
                closed, feats = self.model.ood_method.closed_set(head, dec_in)
                meta = self.model.ood_method.meta_channels(closed, head, size)
            out.pop("anomaly_score")
            out.update(features=feats, meta_channels=meta,
                       reconstruction=(meta.unsqueeze(1) * images.tensor.unsqueeze(2)).sum(2))
        return out

    def references(self) -> Dict[str, torch.Tensor]:
        """The fixture's tensors under the names of :meth:`outputs`."""
        f = self.fixture
        if self.test_id == "pebal":  # 19 classes + the abstention channel
            return {"sem_seg": f["logits"][:, :19], "logits": f["logits"], "anomaly_score": f["anomaly_score"]}
        if self.test_id == "rpl":
            return {"sem_seg": f["logits_vanilla"], "logits_rpl": f["logits_rpl"], "anomaly_score": f["anomaly_score"]}
        if self.test_id == "densehybrid":
            return {"sem_seg": f["logits"], "logits_ood": f["logits_ood"], "anomaly_score": f["anomaly_score"]}
        return {"sem_seg": f["logits"], "features": f["features"], "meta_channels": f["meta_channels"],
                "reconstruction": f["reconstruction"]}


@pytest.fixture(scope="module")
def official_run(request, reference_dir) -> OfficialRun:
    """Indirectly parametrized; module scope runs every test of one network before the next."""
    return OfficialRun(reference_dir, request.param)


def _networks():
    return pytest.mark.parametrize("official_run", list(CASES), indirect=True)


# ----------------------------------------------------------------------------- keys and weights


@_networks()
def test_keys_and_shapes_match_the_official_table(official_run, reference_dir):
    model, case = official_run.model, CASES[official_run.test_id]
    layout = model.official_key_layout()
    table = {layout.unwrap(key)[0]: shape for key, shape, _ in read_key_table(case.tsv(reference_dir))}
    state = model.state_dict()
    ours = {official: tuple(state[key].shape) for official, key in layout.names.items()}
    assert {k: v for k, v in ours.items() if not k.startswith("metric_model.")} == table
    # Every key of the network has an official name in the table; RAML's metric head (embedding
    # MLP, region classifier) is in the official checkpoints' "metric_model" entry, its
    # prototypes have no official counterpart.
    network = sorted(k for k in state if not k.startswith("ood_method.") or not official_run.test_id.startswith("raml"))
    assert sorted(k for o, k in layout.names.items() if not o.startswith("metric_model.")) == network
    if official_run.test_id.startswith("raml"):
        metric = {o: tuple(state[k].shape) for o, k in layout.names.items() if o.startswith("metric_model.")}
        known = model.sem_seg_head.num_classes
        assert metric == {"metric_model.model.0.weight": (128, 256), "metric_model.model.0.bias": (128,),
                          "metric_model.model.2.weight": (128, 128), "metric_model.model.2.bias": (128,),
                          "metric_model.classifier.weight": (known, 128)}  # main_metric.py MetricModel
    assert sum(state[k].numel() for k in network if "running" not in k and "num_batches" not in k) \
        == PARAMETERS[official_run.test_id]
    assert official_run.fixture["n_parameters"] == PARAMETERS[official_run.test_id]


@_networks()
def test_recipe_weights_load_strictly_and_come_back_under_the_official_names(official_run):
    run = official_run
    assert [row[0] for row in run.fixture["state_dict_keys"]] == list(run.recipe)
    stored, rebuilt = run.fixture["weight_checksums"], checksums(run.recipe)
    assert rebuilt.keys() == stored.keys()
    assert all(tuple(rebuilt[k]) == tuple(stored[k]) for k in stored), "recipe tensors differ from the fixture"
    layout, state = run.model.official_key_layout(), run.model.state_dict()
    assert all(torch.equal(state[layout.names[layout.unwrap(k)[0]]], v) for k, v in run.recipe.items())
    assert len(run.recipe) == len(run.fixture["state_dict_keys"])


# ----------------------------------------------------------------------------- forward passes


@_networks()
def test_outputs_and_scores_through_the_segmentor_match_official(official_run):
    run = official_run
    ours, refs = run.outputs(), run.references()
    errors = {key: rel_error(ours[key], ref) for key, ref in refs.items()}
    print(f"{run.test_id} max relative errors: {errors}")
    assert "sem_seg" in errors and len(errors) >= 3
    assert all(e <= REL_TOL for e in errors.values()), errors
    assert torch.isfinite(run.result["ood_score"]).all()
    if run.test_id.startswith("raml"):  # no released score: ours is the paper's (Eq. 5), registered as "raml"
        assert run.fixture["anomaly_score"] is None and run.model.scorer.names == ["raml"]


def test_each_method_defaults_to_its_official_score():
    # PEBAL and RPL: GaussianBlur(7, sigma 1) of -logsumexp of the 19 logits (of RPL's residual
    # path); DenseHybrid: -logsumexp + log softmax(logits_ood)[1], no smoothing.
    expected = {"pebal": (["energy"], 7), "rpl": (["energy"], 7), "densehybrid": (["densehybrid_official"], 0)}
    for test_id, (names, kernel) in expected.items():  # (the WRN cases)
        scorer = CASES[test_id].build("MODEL.WIDE_RESNET.STRUCTURE", "[1, 1, 1, 1, 1, 1]").scorer
        assert (scorer.names, scorer.smoothing_kernel, scorer.smoothing_sigma) == (names, kernel, 1.0)


@_networks()
def test_network_input_and_intermediates_match_official(official_run):
    run = official_run
    # Ours normalises (x - 255 mean) / (255 std), the official code (x / 255 - mean) / std: equal
    # up to float rounding. Nothing is padded: the network sees the image at its own size.
    assert rel_error(run.captured["network_input"], run.fixture["network_input"]) < 1e-6
    errors = {key: rel_error(run.captured[key], ref) for key, ref in run.fixture["intermediates"].items()}
    print(f"{run.test_id} intermediates max relative error: {errors}")
    assert errors.keys() == run.fixture["intermediates"].keys()
    assert all(e <= REL_TOL for e in errors.values()), errors


@_networks()
@pytest.mark.parametrize("size", [(37, 53), (45, 80)], ids=["37x53", "720x1280_over_16"])
def test_any_input_size_runs_at_its_own_size(official_run, size):
    model = official_run.model
    modules = dict(model.named_modules())
    shapes = {}
    hooks = [modules[p].register_forward_hook(lambda _m, _a, out, p=p: shapes.__setitem__(p, tuple(out.shape[-2:])))
             for p in ("backbone.mod2", "backbone.mod7", "backbone.layer1", "backbone.layer4") if p in modules]
    hooks.append(model.ood_method.register_forward_hook(
        lambda _m, args, _out: shapes.__setitem__("images", tuple(args[3].tensor.shape[-2:]))))
    image = torch.randint(0, 256, (3,) + size).float()
    with torch.no_grad():
        out = model(image_input(image))[0]
    for hook in hooks:
        hook.remove()
    assert out["sem_seg"].shape == (model.sem_seg_head.num_classes,) + size and out["ood_score"].shape == size
    assert torch.isfinite(out["sem_seg"]).all() and torch.isfinite(out["ood_score"]).all()
    assert shapes["images"] == size  # no padding
    if isinstance(model.sem_seg_head, DeepWV3PlusHead):  # WRN-38 rounds strides up, as the official trunk
        half = tuple((s + 1) // 2 for s in size)
        eighth = tuple((((s + 1) // 2 + 1) // 2 + 1) // 2 for s in size)
        assert shapes["backbone.mod2"] == half and shapes["backbone.mod7"] == eighth
    if size == (37, 53) and "backbone.mod2" in shapes:
        assert shapes["backbone.mod2"] == (19, 27) and shapes["backbone.mod7"] == (5, 7)  # the fixture README's
    if size == (37, 53) and "backbone.layer1" in shapes:  # torchvision's stem and strides round up too
        assert shapes["backbone.layer1"] == (10, 14) and shapes["backbone.layer4"] == (3, 4)

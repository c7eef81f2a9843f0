"""Numerical equivalence with the official Mask2Former / RbA code on its reference fixtures."""
import pytest
import torch
import torch.nn.functional as F

from .m2f_build import build_on, fixture_cfg, load_fixture

FIXTURES = ["m2f_swin_micro_rba_seed7.pt", "m2f_swin_micro_3level_seed11.pt"]
ATOL = 1e-4


@pytest.fixture(scope="module", params=FIXTURES)
def loaded(request, reference_dir):
    fixture = load_fixture(reference_dir / request.param)
    cfg = fixture_cfg(fixture)
    model = build_on(cfg).eval()
    # Strict: every key of the official state dict and nothing else.
    model.load_state_dict(fixture["state_dict"], strict=True)
    return fixture, cfg, model


def test_fixture_config_is_what_we_think(loaded):
    fixture, cfg, model = loaded
    levels = len(cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES)
    assert model.sem_seg_head.predictor.num_feature_levels == levels
    assert model.sem_seg_head.predictor.num_layers == cfg.MODEL.MASK_FORMER.DEC_LAYERS - 1
    assert model.sem_seg_head.pixel_decoder.transformer.level_embed.shape[0] == levels


def test_head_outputs_match_reference(loaded):
    fixture, _, model = loaded
    image = fixture["image"]
    with torch.no_grad():
        x = ((image - model.pixel_mean) / model.pixel_std)[None]
        outputs = model.sem_seg_head(model.backbone(x))
        logits, masks = outputs["pred_logits"][0], outputs["pred_masks"][0]
        upsampled = F.interpolate(masks[None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0]
        scores = model.semantic_scores(logits, upsampled)
        rba = -scores.tanh().sum(0)
    for name, ours in [("pred_logits", logits), ("pred_masks", masks), ("sem_scores", scores), ("rba", rba)]:
        ref = fixture[name]
        assert ours.shape == ref.shape, name
        err = (ours - ref).abs().max().item()
        assert err <= ATOL, f"{name}: max abs error {err:.3g}"


def test_inference_returns_reference_sem_scores(loaded):
    fixture, _, model = loaded
    with torch.no_grad():
        out = model([{"image": fixture["image"]}])
    assert len(out) == 1 and set(out[0]) == {"sem_seg", "ood_score"}
    assert (out[0]["sem_seg"] - fixture["sem_scores"]).abs().max().item() <= ATOL
    # The default anomaly score is RbA: the model's output equals the official code's map.
    assert (out[0]["ood_score"] - fixture["rba"]).abs().max().item() <= ATOL


def test_inference_resizes_to_requested_size(loaded):
    fixture, _, model = loaded
    _, h, w = fixture["image"].shape
    with torch.no_grad():
        out = model([{"image": fixture["image"], "height": h * 2, "width": w * 2}])[0]["sem_seg"]
    expected = F.interpolate(fixture["sem_scores"][None], size=(h * 2, w * 2), mode="bilinear", align_corners=False)[0]
    assert out.shape == (fixture["sem_scores"].shape[0], h * 2, w * 2)
    assert (out - expected).abs().max().item() <= ATOL


def test_padding_to_size_divisibility_is_cropped_back(loaded):
    # An image that is not a multiple of 32 is padded for the network and cropped back.
    fixture, _, model = loaded
    image = fixture["image"][:, :-5, :-11]
    with torch.no_grad():
        out = model([{"image": image}])[0]["sem_seg"]
    assert out.shape[-2:] == image.shape[-2:]
    assert torch.isfinite(out).all() and out.min() >= 0

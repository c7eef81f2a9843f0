"""MODEL.FUSED_ATTENTION: the fused (scaled_dot_product_attention) and the reference (separate
matmul / add / softmax) attention paths give the official code's outputs and each other's, from
the same parameters and checkpoint keys."""
import pytest
import torch
import torch.nn.functional as F

from rba_plugin.modeling.backbone.swin import WindowAttention, shifted_window_mask
from rba_plugin.modeling.transformer_decoder.layers import CrossAttentionLayer, SelfAttentionLayer

from .m2f_build import build_on, fixture_cfg, load_fixture

FIXTURES = ["m2f_swin_micro_rba_seed7.pt", "m2f_swin_micro_3level_seed11.pt"]
REFERENCE_ATOL = 1e-4  # against the official code's outputs (as tests/test_m2f_equivalence.py)
PATHS_ATOL = 1e-5  # fused against unfused


def _head_outputs(model, image):
    with torch.no_grad():
        x = ((image - model.pixel_mean) / model.pixel_std)[None]
        outputs = model.sem_seg_head(model.backbone(x))
        logits, masks = outputs["pred_logits"][0], outputs["pred_masks"][0]
        upsampled = F.interpolate(masks[None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0]
        scores = model.semantic_scores(logits, upsampled)
        full = model([{"image": image}])[0]
    return {"pred_logits": logits, "pred_masks": masks, "sem_scores": scores, "rba": -scores.tanh().sum(0),
            "inference sem_seg": full["sem_seg"], "inference ood_score": full["ood_score"]}


@pytest.fixture(scope="module", params=FIXTURES)
def both_paths(request, reference_dir):
    fixture = load_fixture(reference_dir / request.param)
    outputs, keys = {}, {}
    for fused in (True, False):
        cfg = fixture_cfg(fixture)
        cfg.MODEL.FUSED_ATTENTION = fused
        model = build_on(cfg).eval()
        model.load_state_dict(fixture["state_dict"], strict=True)  # same keys for both paths
        keys[fused] = list(model.state_dict())
        attn = model.backbone.layers[0].blocks[0].attn
        assert attn.fused_attention is fused
        assert model.sem_seg_head.predictor.transformer_cross_attention_layers[0].fused_attention is fused
        outputs[fused] = _head_outputs(model, fixture["image"])
    assert keys[True] == keys[False]
    return fixture, outputs


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_each_path_matches_the_official_outputs(both_paths, fused):
    fixture, outputs = both_paths
    ref = {"pred_logits": fixture["pred_logits"], "pred_masks": fixture["pred_masks"],
           "sem_scores": fixture["sem_scores"], "rba": fixture["rba"],
           "inference sem_seg": fixture["sem_scores"], "inference ood_score": fixture["rba"]}
    for name, expected in ref.items():
        err = (outputs[fused][name] - expected).abs().max().item()
        assert err <= REFERENCE_ATOL, f"{name}: max abs error {err:.3g}"


def test_fused_and_unfused_paths_agree(both_paths):
    _, outputs = both_paths
    for name in outputs[True]:
        err = (outputs[True][name] - outputs[False][name]).abs().max().item()
        assert err <= PATHS_ATOL, f"{name}: fused vs unfused max abs error {err:.3g}"


def _window_attention_pair(dim=32, heads=4, window=7):
    torch.manual_seed(0)
    fused = WindowAttention(dim, window, heads, fused_attention=True)
    unfused = WindowAttention(dim, window, heads, fused_attention=False)
    unfused.load_state_dict(fused.state_dict())
    return fused, unfused


@pytest.mark.parametrize("shifted", [False, True], ids=["plain", "shifted"])
def test_window_attention_paths_agree_forward_and_backward(shifted):
    # Two images of 3 x 4 windows: the shift mask is broadcast over the batch on both paths.
    fused, unfused = _window_attention_pair()
    mask = shifted_window_mask(21, 28, 7, 3, "cpu") if shifted else None
    if shifted:
        assert mask.shape == (12, 49, 49) and (mask == -100).any()
    x = torch.randn(2 * 12, 49, 32)
    results = []
    for module in (fused, unfused):
        inp = x.clone().requires_grad_()
        out = module(inp, mask)
        out.square().sum().backward()
        results.append((out.detach(), inp.grad, module.relative_position_bias_table.grad, module.qkv.weight.grad))
    for name, a, b in zip(("output", "input grad", "bias-table grad", "qkv grad"), *results):
        assert (a - b).abs().max().item() <= PATHS_ATOL * max(1.0, b.abs().max().item()), name


def test_shifted_window_mask_matches_the_reference_construction():
    # The slice-based construction of the official Swin code, for sizes that need padding.
    h, w, ws, shift = 19, 30, 7, 3
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    regions = torch.zeros((1, hp, wp, 1))
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            regions[:, hs, wsl, :] = cnt
            cnt += 1
    windows = regions.view(1, hp // ws, ws, wp // ws, ws, 1).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    expected = diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)
    assert torch.equal(shifted_window_mask(h, w, ws, shift, "cpu"), expected)


@pytest.mark.parametrize("layer_cls", [SelfAttentionLayer, CrossAttentionLayer], ids=["self", "cross"])
def test_decoder_attention_paths_agree(layer_cls):
    torch.manual_seed(0)
    fused = layer_cls(64, 8, fused_attention=True)
    unfused = layer_cls(64, 8, fused_attention=False)
    unfused.load_state_dict(fused.state_dict())
    queries, pos = torch.randn(20, 2, 64), torch.randn(20, 2, 64)
    if layer_cls is SelfAttentionLayer:
        outs = [m(queries, query_pos=pos) for m in (fused, unfused)]
    else:
        memory, mem_pos = torch.randn(96, 2, 64), torch.randn(96, 2, 64)
        # Mask2Former's masked attention: True = may not attend (no row fully masked).
        mask = torch.rand(2 * 8, 20, 96) > 0.5
        mask[:, :, 0] = False
        outs = [m(queries, memory, memory_mask=mask, pos=mem_pos, query_pos=pos) for m in (fused, unfused)]
    assert (outs[0] - outs[1]).abs().max().item() <= PATHS_ATOL


@pytest.mark.parametrize("size", [(2, 70, 98), (1, 64, 64), (2, 28, 200)], ids=["padded-batch2", "tiled", "one-window-row"])
def test_swin_paths_agree_forward_and_backward(size):
    # The fused path's window layout (one gather each way, plain windows first, padding dropped
    # before proj) against the reference's pad / roll / partition, with gradients, at sizes that
    # need padding, that tile exactly, and where every window is in the last row or column.
    from rba_plugin.modeling.backbone.swin import SwinTransformer

    batch, h, w = size
    torch.manual_seed(0)
    config = dict(embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=7, drop_path_rate=0.0, out_indices=(0, 1))
    fused = SwinTransformer(**config)
    reference = SwinTransformer(**config, fused_attention=False)
    reference.load_state_dict(fused.state_dict())
    x = torch.randn(batch, 3, h, w)
    grads, outs = [], []
    for model in (fused, reference):
        model.train()
        out = model(x)
        sum(o.square().mean() for o in out.values()).backward()
        outs.append(out)
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for key in outs[0]:
        assert (outs[0][key] - outs[1][key]).abs().max().item() <= PATHS_ATOL, key
    for name, grad in grads[0].items():
        scale = max(1.0, grads[1][name].abs().max().item())
        assert (grad - grads[1][name]).abs().max().item() <= PATHS_ATOL * scale, name


def test_onednn_linear_is_nn_linear():
    # Same parameters and keys as nn.Linear; the oneDNN product only where no gradient is asked.
    from rba_plugin.layers import Linear, onednn_linear_available

    torch.manual_seed(0)
    layer, plain = Linear(64, 96), torch.nn.Linear(64, 96)
    plain.load_state_dict(layer.state_dict())
    assert list(layer.state_dict()) == ["weight", "bias"]
    x = torch.randn(3, 50, 64)
    with torch.no_grad():
        got, expected = layer(x), plain(x)
    assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    # With autograd it is F.linear itself (oneDNN's operator has no gradient here).
    x.requires_grad_()
    layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    assert onednn_linear_available() == (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))

"""freeze_except: frozen parts get no gradient, keep eval mode, and stay bit-identical."""
import pytest
import torch
from torch import nn

from rba_plugin.modeling.freeze import freeze_except, trainable_parameter_count


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
        self.classifier = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.classifier(self.head(self.trunk(x)))


def test_only_allowed_parameters_change_and_frozen_stay_in_eval():
    torch.manual_seed(0)
    net = Net()
    kept = freeze_except(net, ["classifier", "head.1"])
    assert kept == ["head.1.weight", "head.1.bias", "classifier.weight", "classifier.bias"]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    net.train()
    assert not net.trunk.training and not net.trunk[1].training and not net.trunk[3].training
    assert not net.head[0].training  # frozen leaf inside a partly trainable module
    assert net.head[1].training and net.classifier.training
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(2, 3, 8, 8)).square().mean().backward()
        opt.step()
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # BN of the trainable head.1 updates its statistics; everything frozen is bit-identical.
    assert changed == {
        "head.1.weight", "head.1.bias", "head.1.running_mean", "head.1.running_var",
        "head.1.num_batches_tracked", "classifier.weight", "classifier.bias",
    }


def test_frozen_output_is_deterministic_in_train_mode():
    torch.manual_seed(0)
    net = Net()
    freeze_except(net, ["classifier"])
    net.train()
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(net.trunk(x), net.trunk(x))  # dropout off


def test_counts_and_typo():
    net = Net()
    freeze_except(net, ["classifier"])
    trainable, total = trainable_parameter_count(net)
    assert trainable == 4 * 2 + 2
    assert total == sum(p.numel() for p in net.parameters())
    with pytest.raises(ValueError, match="classifer"):
        freeze_except(Net(), ["classifer"])

"""The online linear probe: no gradient into the backbone, and its state round-trips."""
from __future__ import annotations

import torch
from helpers import tiny_vit_16px as tiny_vit


def test_online_probe_sends_no_gradient_to_the_backbone_and_its_state_round_trips():
    from selfsup.callbacks.online_monitors import LinearProbeMonitor
    from selfsup.evaluation.linear import LinearProbe, make_optimizer
    from selfsup.objectives.simclr import SimCLR

    torch.manual_seed(0)
    backbone = tiny_vit()
    objective = SimCLR(backbone, views=[{"key": "view1"}, {"key": "view2"}], projector_hidden_dim=16, projector_dim=8)
    batch = {"view1": torch.randn(6, 3, 16, 16), "view2": torch.randn(6, 3, 16, 16)}
    out = objective(backbone, batch)
    assert out.features is not None and out.features.shape == (6, backbone.num_features)
    assert not out.features.requires_grad
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}
    assert grads

    def monitor() -> LinearProbeMonitor:
        m = LinearProbeMonitor(optimizer="adamw", lr=1e-2)
        m.probe = LinearProbe(backbone.num_features, 3)
        m.optimizer = make_optimizer("adamw", m.probe.parameters(), 1e-2)
        return m

    probe = monitor()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    before = {n: p.clone() for n, p in backbone.named_parameters()}
    for _ in range(3):
        probe.train_step(out.features, labels)
    assert probe.probe.linear.weight.abs().sum() > 0  # the probe learned
    for name, p in backbone.named_parameters():
        assert torch.equal(p, before[name]), name
        if name in grads:
            assert torch.equal(p.grad, grads[name]), f"the probe changed the gradient of {name}"
        else:
            assert p.grad is None, name

    state = probe.state_dict()
    resumed = monitor()
    resumed.load_state_dict(state)
    for (name, a), b in zip(probe.probe.state_dict().items(), resumed.probe.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.optimizer.state_dict()["state"][0]["step"] == probe.optimizer.state_dict()["state"][0]["step"]
    assert int(resumed._seen) == int(probe._seen) == 18


def test_monitors_embed_with_the_eval_model_unless_it_is_a_dual_encoder():
    """DINO evaluates its teacher (objective.evaluate), so kNN and the health monitor embed with it; CLIP's eval model
    is a dual encoder, so they embed with the image tower itself."""
    from types import SimpleNamespace

    from helpers import FlatBackbone

    from selfsup.callbacks.online_monitors import probed_backbone
    from selfsup.objectives.dino import DINO

    backbone = FlatBackbone()
    views = [{"key": "global1"}, {"key": "global2"}]
    for evaluate in ("teacher", "student"):
        dino = DINO(backbone, views, out_dim=8, hidden_dim=8, bottleneck_dim=4, evaluate=evaluate)
        chosen = probed_backbone(SimpleNamespace(objective=dino, backbone=backbone))
        assert chosen is (dino.teacher["backbone"] if evaluate == "teacher" else backbone)
    dual = SimpleNamespace(eval_model=lambda b: SimpleNamespace(modality="image-text"))
    assert probed_backbone(SimpleNamespace(objective=dual, backbone=backbone)) is backbone

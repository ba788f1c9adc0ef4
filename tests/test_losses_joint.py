"""Joint-embedding losses (SimCLR/DCL, MoCo v3, BYOL, SimSiam, Barlow Twins, VICReg) against independent
references: lightly's loss classes and explicit loops over tiny tensors; EMA and momentum schedules; one
training step of each method on a small CNN."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from workbench.config import ConfigError
from workbench.methods import Batch, Progress, Recipe, build_method, cosine_momentum, ema_update
from workbench.methods import barlow_twins as bt_mod
from workbench.methods import mocov3 as moco_mod
from workbench.methods import simclr as simclr_mod
from workbench.methods import vicreg as vicreg_mod
from workbench.methods.barlow_twins import barlow_twins_loss
from workbench.methods.byol import byol_loss
from workbench.methods.mocov3 import infonce_loss
from workbench.methods.simclr import nt_xent_loss
from workbench.methods.simsiam import negative_cosine_loss
from workbench.methods.vicreg import vicreg_loss, vicreg_terms
from workbench.models.backbones import build_backbone

lightly_loss = pytest.importorskip("lightly.loss")

JOINT_METHODS = ["simclr", "mocov3", "byol", "simsiam", "barlow_twins", "vicreg"]


def _pair(b: int = 6, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, d, generator=g, dtype=torch.float64)
    return z1.float(), (z1 + 0.7 * torch.randn(b, d, generator=g, dtype=torch.float64)).float()


# ---------------------------------------------------------------- SimCLR / DCL

@pytest.mark.parametrize("temperature", [0.2, 0.5])
def test_nt_xent_matches_lightly(temperature):
    z1, z2 = _pair()
    ours = nt_xent_loss(z1, z2, temperature)
    ref = lightly_loss.NTXentLoss(temperature=temperature)(z1, z2)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def _dcl_by_hand(z1, z2, t, sigma=None):
    """Eq. 6 of Yeh et al. with loops: anchor (view v, image i); positive (other view, i); negatives: every
    other view of every other image (2(B-1) of them); the positive term weighted by DCLW's w_i."""
    z = [[F.normalize(z1, dim=1)[i].double() for i in range(len(z1))],
         [F.normalize(z2, dim=1)[i].double() for i in range(len(z2))]]
    b = len(z1)
    w = [1.0] * b
    if sigma is not None:
        e = [math.exp(float(z[0][i] @ z[1][i]) / sigma) for i in range(b)]
        w = [2 - e[i] / (sum(e) / b) for i in range(b)]
    total = 0.0
    for v in range(2):
        for i in range(b):
            pos = float(z[v][i] @ z[1 - v][i]) / t
            neg = sum(math.exp(float(z[v][i] @ z[u][j]) / t) for u in range(2) for j in range(b) if j != i)
            total += -w[i] * pos + math.log(neg)
    return total / (2 * b)


@pytest.mark.filterwarnings("ignore:To copy construct from a tensor")  # inside lightly's DCLW weights
def test_dcl_and_dclw_by_hand_and_lightly():
    z1, z2 = _pair(4, 3, seed=1)
    dcl = nt_xent_loss(z1, z2, 0.1, decoupled=True)
    assert float(dcl) == pytest.approx(_dcl_by_hand(z1, z2, 0.1), rel=1e-5)
    torch.testing.assert_close(dcl, lightly_loss.DCLLoss(temperature=0.1)(z1, z2), rtol=1e-5, atol=1e-6)
    dclw = nt_xent_loss(z1, z2, 0.1, decoupled=True, dcl_sigma=0.5)
    assert float(dclw) == pytest.approx(_dcl_by_hand(z1, z2, 0.1, sigma=0.5), rel=1e-5)
    torch.testing.assert_close(dclw, lightly_loss.DCLWLoss(temperature=0.1, sigma=0.5)(z1, z2), rtol=1e-5,
                               atol=1e-6)
    assert abs(float(dclw) - float(dcl)) > 1e-4  # the weighting changes the value
    # removing the positive from the denominator lowers the loss below NT-Xent's
    assert float(dcl) < float(nt_xent_loss(z1, z2, 0.1))


def _fake_dist(monkeypatch, module, r, full_tensors):
    """Pretend to be rank ``r``: ``gather`` returns the global tensor (one per call, in call order) with this
    rank's slice replaced by the local input; ``rank()`` returns r."""
    calls = iter(full_tensors)

    def fake_gather(x):
        full = next(calls)
        b = x.shape[0]
        return torch.cat([full[:r * b], x, full[(r + 1) * b:]])

    monkeypatch.setattr(module, "gather", fake_gather)
    monkeypatch.setattr(module, "rank", lambda: r, raising=False)


@pytest.mark.parametrize("decoupled", [False, True])
def test_nt_xent_rank_offsets(monkeypatch, decoupled):
    """Two simulated ranks holding halves of the batch: the mean of their losses is the one-process loss."""
    z1, z2 = _pair(8, 4, seed=2)
    whole = nt_xent_loss(z1, z2, 0.2, decoupled=decoupled)
    n1, n2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    per_rank = []
    for r in range(2):
        _fake_dist(monkeypatch, simclr_mod, r, [n1, n2])
        sl = slice(4 * r, 4 * r + 4)
        per_rank.append(nt_xent_loss(z1[sl], z2[sl], 0.2, decoupled=decoupled))
    torch.testing.assert_close((per_rank[0] + per_rank[1]) / 2, whole, rtol=1e-5, atol=1e-6)
    assert abs(float(per_rank[0] - per_rank[1])) > 1e-4  # each rank really used its own rows


# ---------------------------------------------------------------- MoCo v3

def _infonce_by_hand(q, k, t):
    q = F.normalize(q, dim=1).double()
    k = F.normalize(k, dim=1).double()
    total = 0.0
    for i in range(len(q)):
        logits = [float(q[i] @ k[j]) / t for j in range(len(k))]
        total += -logits[i] + math.log(sum(math.exp(x) for x in logits))
    return total / len(q) * 2 * t


def test_infonce_by_hand():
    q, k = _pair(3, 3, seed=3)
    for t in (0.2, 1.0):
        assert float(infonce_loss(q, k, t)) == pytest.approx(_infonce_by_hand(q, k, t), rel=1e-5)
    q4, k4 = _pair(4, 4, seed=4)
    assert float(infonce_loss(q4, k4, 0.2)) == pytest.approx(_infonce_by_hand(q4, k4, 0.2), rel=1e-5)


def test_infonce_keys_get_no_gradient_and_rank_offsets(monkeypatch):
    q, k = _pair(6, 4, seed=5)
    q.requires_grad_(True)
    k.requires_grad_(True)
    infonce_loss(q, k, 0.2).backward()
    assert k.grad is None and q.grad is not None and q.grad.abs().sum() > 0
    whole = infonce_loss(q.detach(), k.detach(), 0.2)
    kn = F.normalize(k.detach(), dim=1)
    per_rank = []
    for r in range(2):
        _fake_dist(monkeypatch, moco_mod, r, [kn])
        per_rank.append(infonce_loss(q.detach()[3 * r:3 * r + 3], k.detach()[3 * r:3 * r + 3], 0.2))
    torch.testing.assert_close((per_rank[0] + per_rank[1]) / 2, whole, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- BYOL / SimSiam

def test_byol_and_simsiam_losses_match_negative_cosine():
    p, z = _pair(7, 5, seed=6)
    ncs = lightly_loss.NegativeCosineSimilarity()(p, z)
    torch.testing.assert_close(negative_cosine_loss(p, z), ncs)
    torch.testing.assert_close(byol_loss(p, z), 2 + 2 * ncs)
    # hand value for one pair: p = (1, 0), z = (1, 1) -> cos = 1/sqrt(2)
    p1, z1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    assert float(byol_loss(p1, z1)) == pytest.approx(2 - math.sqrt(2), rel=1e-6)
    assert float(negative_cosine_loss(p1, z1)) == pytest.approx(-1 / math.sqrt(2), rel=1e-6)


def test_stop_gradient_on_targets():
    p, z = _pair(5, 4, seed=7)
    for fn in (byol_loss, negative_cosine_loss):
        pp, zz = p.clone().requires_grad_(True), z.clone().requires_grad_(True)
        fn(pp, zz).backward()
        assert zz.grad is None and pp.grad.abs().sum() > 0


# ---------------------------------------------------------------- Barlow Twins / VICReg

def test_barlow_twins_matches_lightly_and_hand():
    z1, z2 = _pair(16, 6, seed=8)
    ref = lightly_loss.BarlowTwinsLoss(lambda_param=0.0051)(z1, z2)
    torch.testing.assert_close(barlow_twins_loss(z1, z2, 0.0051, 1.0), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(barlow_twins_loss(z1, z2, 0.0051, 0.1), 0.1 * ref, rtol=1e-5, atol=1e-5)
    # hand: perfectly correlated, decorrelated dimensions give c = I and a zero loss
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert float(barlow_twins_loss(x, 3 * x + 2)) == pytest.approx(0.0, abs=1e-4)
    # anti-correlated single dimension: c_00 = -1 -> (1 - (-1))^2 = 4
    y = torch.tensor([[1.0], [-1.0], [2.0], [-2.0]])
    assert float(barlow_twins_loss(y, -y)) == pytest.approx(4.0, rel=1e-3)


def test_vicreg_matches_lightly():
    z1, z2 = _pair(10, 6, seed=9)
    ref = lightly_loss.VICRegLoss(lambda_param=25.0, mu_param=25.0, nu_param=1.0, eps=1e-4)(z1, z2)
    torch.testing.assert_close(vicreg_loss(z1, z2), ref, rtol=1e-5, atol=1e-5)
    ref2 = lightly_loss.VICRegLoss(lambda_param=1.0, mu_param=2.0, nu_param=3.0, eps=1e-3)(z1, z2)
    torch.testing.assert_close(vicreg_loss(z1, z2, 1.0, 2.0, 3.0, 1e-3), ref2, rtol=1e-5, atol=1e-5)


def test_vicreg_terms_by_hand():
    # two samples, two dims: z1 = [[0, 0], [2, 2]], z2 = [[0, 1], [2, 1]]
    z1 = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    z2 = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    inv, var, cov = vicreg_terms(z1, z2, eps=1e-4)
    assert float(inv) == pytest.approx(0.5)  # squared errors (0, 1, 0, 1) averaged
    # std(z1) = sqrt(2) per dim -> hinge 0; z2: dim 0 std sqrt(2) -> 0, dim 1 std sqrt(1e-4) -> 0.99
    assert float(var) == pytest.approx(0.5 * (1 - 0.01) / 2, rel=1e-4)
    # cov(z1) = [[2, 2], [2, 2]] -> off-diagonal 2 * 4 / 2 = 4; cov(z2) off-diagonal 0
    assert float(cov) == pytest.approx(4.0, rel=1e-5)


def test_global_batch_statistics_across_simulated_ranks(monkeypatch):
    """Barlow Twins and VICReg use the statistics of the global batch: every rank's loss from its half plus the
    gathered halves equals (Barlow) or averages to (VICReg's local invariance term) the one-process loss."""
    z1, z2 = _pair(12, 5, seed=10)
    whole_bt = barlow_twins_loss(z1, z2, 0.0051, 0.1)
    whole_vic = vicreg_loss(z1, z2)
    vic = []
    for r in range(2):
        sl = slice(6 * r, 6 * r + 6)
        _fake_dist(monkeypatch, bt_mod, r, [z1, z2])
        torch.testing.assert_close(barlow_twins_loss(z1[sl], z2[sl], 0.0051, 0.1), whole_bt, rtol=1e-5, atol=1e-6)
        _fake_dist(monkeypatch, vicreg_mod, r, [z1, z2])
        vic.append(vicreg_loss(z1[sl], z2[sl]))
    torch.testing.assert_close((vic[0] + vic[1]) / 2, whole_vic, rtol=1e-5, atol=1e-5)
    # the local-only Barlow loss of half the batch differs (so the test above can fail)
    monkeypatch.setattr(bt_mod, "gather", lambda x: x)
    assert abs(float(barlow_twins_loss(z1[:6], z2[:6], 0.0051, 0.1) - whole_bt)) > 1e-3


def test_losses_run_in_float32_under_bf16_autocast():
    z1, z2 = _pair(8, 6, seed=11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = [nt_xent_loss(z1.bfloat16(), z2.bfloat16(), 0.2), infonce_loss(z1.bfloat16(), z2.bfloat16()),
               barlow_twins_loss(z1.bfloat16(), z2.bfloat16()), vicreg_loss(z1.bfloat16(), z2.bfloat16())]
    full = [nt_xent_loss(z1, z2, 0.2), infonce_loss(z1, z2), barlow_twins_loss(z1, z2), vicreg_loss(z1, z2)]
    for a, b in zip(low, full):  # only the bf16 rounding of the inputs differs
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
    d1, d2 = z1.double(), z2.double()  # float64 stays float64 (for precise numerical checks)
    for fn in (nt_xent_loss, infonce_loss, barlow_twins_loss, vicreg_loss, byol_loss, negative_cosine_loss):
        assert fn(d1, d2).dtype == torch.float64


# ---------------------------------------------------------------- EMA and momentum schedule

def test_ema_update_moves_by_one_minus_m():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    teacher = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    student[1].running_mean.fill_(0.5)
    before = [p.detach().clone() for p in teacher.parameters()]
    m = 0.9
    ema_update(teacher, student, m)
    for t_new, t_old, s in zip(teacher.parameters(), before, student.parameters()):
        torch.testing.assert_close(t_new - t_old, (1 - m) * (s - t_old))
    torch.testing.assert_close(teacher[1].running_mean, student[1].running_mean)


def test_cosine_momentum_endpoints():
    assert cosine_momentum(0.99, Progress(step=0, total_steps=100)) == pytest.approx(0.99)
    assert cosine_momentum(0.99, Progress(step=50, total_steps=100)) == pytest.approx(0.995)
    assert cosine_momentum(0.99, Progress(step=100, total_steps=100)) == pytest.approx(1.0)
    assert cosine_momentum(0.9, Progress(step=100, total_steps=100), final=0.95) == pytest.approx(0.95)
    values = [cosine_momentum(0.996, Progress(step=s, total_steps=10)) for s in range(11)]
    assert all(a < b for a, b in zip(values, values[1:]))


# ---------------------------------------------------------------- configs

def test_config_errors_name_the_field():
    bb = build_backbone("small_cnn", 16, 3, width=4)
    with pytest.raises(ConfigError, match="loss"):
        build_method("simclr", bb, {"loss": "infonce"})
    with pytest.raises(ConfigError, match="dcl_sigma"):
        build_method("simclr", bb, {"dcl_sigma": 0.5})
    with pytest.raises(ConfigError, match="temperature"):
        build_method("mocov3", bb, {"temperature": 0.0})
    with pytest.raises(ConfigError, match="final_momentum"):
        build_method("byol", bb, {"momentum": 0.99, "final_momentum": 0.9})
    with pytest.raises(ConfigError, match="eps"):
        build_method("vicreg", bb, {"eps": -1})
    with pytest.raises(ConfigError, match="lambd"):
        build_method("barlow_twins", bb, {"lambd": -0.1})
    with pytest.raises(ConfigError, match="proj_layers"):
        build_method("simsiam", bb, {"proj_layers": 0})
    assert build_method("simclr", bb, {"loss": "dcl", "dcl_sigma": "0.5"}).config.dcl_sigma == 0.5


def test_mocov3_heads_follow_backbone_kind():
    cnn = build_method("mocov3", build_backbone("small_cnn", 16, 3, width=4), {"proj_hidden_dim": 8})
    vit = build_method("mocov3", build_backbone("vit_tiny", 16, 3, patch_size=8, depth=1), {"proj_hidden_dim": 8})
    linears = lambda seq: sum(isinstance(m, torch.nn.Linear) for m in seq)  # noqa: E731
    assert linears(cnn.projector) == 2 and linears(vit.projector) == 3
    assert not isinstance(cnn.predictor[-1], torch.nn.BatchNorm1d)
    assert isinstance(vit.predictor[-1], torch.nn.BatchNorm1d) and not vit.predictor[-1].affine
    assert isinstance(cnn.projector[-1], torch.nn.BatchNorm1d) and not cnn.projector[-1].affine


# ---------------------------------------------------------------- one training step per method

SMALL_HEADS = {"proj_hidden_dim": 64, "proj_output_dim": 32}
PRED = {"pred_hidden_dim": 16}


@pytest.mark.parametrize("name", JOINT_METHODS)
def test_defaults_build_the_recipe_heads(name):
    """Default heads (solo-learn CIFAR recipes) on the small CNN: output sizes as documented."""
    method = build_method(name, build_backbone("small_cnn", 16, 3, width=4))
    expected = {"simclr": 256, "mocov3": 256, "byol": 256, "simsiam": 2048, "barlow_twins": 2048, "vicreg": 2048}
    z = method.projector(torch.randn(4, method.backbone.feature_dim))
    assert z.shape == (4, expected[name])
    assert isinstance(method.recipe, Recipe)


@pytest.mark.parametrize("name", JOINT_METHODS)
def test_training_step_smoke(name):
    torch.manual_seed(0)
    options = {**SMALL_HEADS, **(PRED if name in ("mocov3", "byol", "simsiam") else {})}
    method = build_method(name, build_backbone("small_cnn", 16, 3), options)
    method.train()
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    progress = Progress(step=3, total_steps=10, steps_per_epoch=5, total_epochs=2)
    out = method.training_step(Batch(views, 2), progress)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.features.shape == (8, method.backbone.feature_dim) and not out.features.requires_grad
    for v in out.logs.values():
        assert math.isfinite(float(v))
    out.loss.backward()
    grads = [p.grad for p in method.backbone.parameters()]
    assert all(gr is not None for gr in grads) and sum(float(gr.abs().sum()) for gr in grads) > 0

    teachers = method.teacher_modules()
    assert (len(teachers) > 0) == (name in ("mocov3", "byol"))
    teacher_ids = {id(p) for t in teachers for p in t.parameters()}
    state_keys = set(method.state_dict())
    for t in teachers:
        assert all(not p.requires_grad and p.grad is None for p in t.parameters())
    if teachers:
        assert any(k.startswith(("momentum_", "target_")) for k in state_keys)
        first = next(teachers[0].parameters())
        student_first = next(method.backbone.parameters())
        with torch.no_grad():  # move the student, then the teacher must follow by (1 - m)
            for p in method.parameters():
                if id(p) not in teacher_ids:
                    p.add_(0.1)
        before = first.detach().clone()
        method.update_teacher(progress)
        m = cosine_momentum(method.config.momentum, progress, method.config.final_momentum)
        torch.testing.assert_close(first - before, (1 - m) * (student_first - before))
        assert not torch.equal(first, before)


def test_training_step_rejects_a_single_view():
    method = build_method("simclr", build_backbone("small_cnn", 16, 3, width=4))
    with pytest.raises(ValueError, match="2 views"):
        method.training_step(Batch([torch.randn(4, 3, 16, 16)], 1), Progress())

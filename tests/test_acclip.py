"""ACClip and the clipping baselines: exact updates, state round trips, training, use in runs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from byzlearn import config
from byzlearn.engine import Simulator
from byzlearn.experiments.heavy_tail import NoisySimulator, chambers_mallows_stuck, stable_noise
from byzlearn.optim import OPTIMIZERS, ACClip, ClippedSGD, CoordClippedSGD


def _reference_acclip(x0, grads, lr, b1, b2, eps, alpha, wd=0.0):
    """The paper's update written with Python floats, coordinate by coordinate."""
    x = list(x0)
    m = [0.0] * len(x)
    t = [0.0] * len(x)
    traj = []
    for g in grads:
        for i in range(len(x)):
            gi = g[i] + wd * x[i]
            m[i] = b1 * m[i] + (1 - b1) * gi
            t[i] = b2 * t[i] + (1 - b2) * abs(gi) ** alpha
            tau = t[i] ** (1 / alpha)
            x[i] = x[i] - lr * min(tau / (abs(m[i]) + eps), 1.0) * m[i]
        traj.append(list(x))
    return traj


GRADS = [[1.0, -2.0, 0.5, 0.0], [1.0, 3.0, -0.5, 0.0], [-4.0, 0.1, 0.5, 2.0], [0.2, -0.2, 40.0, 1.0]]


@pytest.mark.parametrize("alpha", [1.0, 2.0, 1.5])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_acclip_matches_formula_step_by_step(alpha, wd):
    x0 = [0.3, -1.0, 2.0, 0.0]
    p = nn.Parameter(torch.tensor(x0, dtype=torch.float64))
    opt = ACClip([p], lr=0.05, betas=(0.8, 0.95), eps=1e-5, alpha=alpha, weight_decay=wd)
    ref = _reference_acclip(x0, GRADS, 0.05, 0.8, 0.95, 1e-5, alpha, wd)
    for g, want in zip(GRADS, ref):
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        assert p.detach().tolist() == pytest.approx(want, rel=1e-12, abs=1e-14)


def test_acclip_clipping_active_and_inactive():
    b1, b2, lr = 0.9, 0.99, 1.0
    # alpha = 2, first step: tau = sqrt(1 - b2)|g| = 0.1|g| = |m|, so no clipping (up to eps)
    p = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = ACClip([p], lr=lr, betas=(b1, b2), eps=0.0, alpha=2.0)
    p.grad = torch.tensor([3.0, -5.0], dtype=torch.float64)
    opt.step()
    assert p.detach().tolist() == pytest.approx([-0.3, 0.5], rel=1e-12)  # -lr * m, m = 0.1 g
    # alpha = 1, first step: tau = 0.01|g| < |m| = 0.1|g|: clipped to tau, sign kept
    p = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = ACClip([p], lr=lr, betas=(b1, b2), eps=0.0, alpha=1.0)
    p.grad = torch.tensor([3.0, -5.0], dtype=torch.float64)
    opt.step()
    assert p.detach().tolist() == pytest.approx([-0.03, 0.05], rel=1e-12)
    # a spike after a calm history: the step is tau, far below lr * m
    p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = ACClip([p], lr=1.0, betas=(b1, b2), eps=0.0, alpha=2.0)
    for _ in range(200):
        p.grad = torch.ones(1, dtype=torch.float64)
        opt.step()
    before = p.item()
    m_prev, t_prev = opt.state[p]["momentum"].item(), opt.state[p]["tau_alpha"].item()
    p.grad = torch.full((1,), 1000.0, dtype=torch.float64)
    opt.step()
    m = b1 * m_prev + (1 - b1) * 1000.0
    tau = math.sqrt(b2 * t_prev + (1 - b2) * 1000.0**2)
    assert tau < m
    assert before - p.item() == pytest.approx(tau, rel=1e-10)


def test_acclip_rejects_bad_arguments():
    p = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="alpha"):
        ACClip(p, lr=0.1, alpha=0.5)
    with pytest.raises(ValueError, match="betas"):
        ACClip(p, lr=0.1, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr"):
        ACClip(p, lr=-1.0)


def test_param_groups_have_their_own_lr():
    a, b = nn.Parameter(torch.zeros(3, dtype=torch.float64)), nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = ACClip([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.4, "alpha": 2.0}], lr=1.0, eps=0.0)
    g = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    a.grad, b.grad = g.clone(), g.clone()
    opt.step()
    assert a.detach().tolist() == pytest.approx([-0.1 * 0.01 * v for v in g.tolist()], rel=1e-9)  # alpha 1: clipped to 0.01|g|
    assert b.detach().tolist() == pytest.approx([-0.4 * 0.1 * v for v in g.tolist()], rel=1e-9)  # alpha 2: not clipped
    assert opt.param_groups[0]["alpha"] == 1.0 and opt.param_groups[1]["alpha"] == 2.0


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: ACClip(ps, lr=0.1, alpha=1.0, weight_decay=0.01),
        lambda ps: ACClip(ps, lr=0.1, alpha=2.0),
        lambda ps: ClippedSGD(ps, lr=0.1, max_norm=0.5, momentum=0.9),
        lambda ps: CoordClippedSGD(ps, lr=0.1, threshold=0.05, momentum=0.9),
    ],
)
def test_state_dict_round_trip_continues_identically(make, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))

    def train(m, opt, steps, start):
        for s in range(start, start + steps):
            opt.zero_grad()
            idx = torch.arange(s * 8, s * 8 + 8) % 64
            nn.functional.cross_entropy(m(x[idx]), y[idx]).backward()
            opt.step()

    straight = copy.deepcopy(model)
    opt_straight = make(list(straight.parameters()))
    train(straight, opt_straight, 10, 0)

    first = copy.deepcopy(model)
    opt_first = make(list(first.parameters()))
    train(first, opt_first, 4, 0)
    torch.save({"model": first.state_dict(), "opt": opt_first.state_dict()}, tmp_path / "ck.pt")
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    resumed = copy.deepcopy(model)
    resumed.load_state_dict(ck["model"])
    opt_resumed = make(list(resumed.parameters()))
    opt_resumed.load_state_dict(ck["opt"])
    train(resumed, opt_resumed, 6, 4)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_clipped_sgd_exact_update():
    a = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    b = nn.Parameter(torch.tensor([0.0], dtype=torch.float64))
    opt = ClippedSGD([a, b], lr=0.5, max_norm=2.5, weight_decay=0.0)
    a.grad, b.grad = torch.tensor([3.0, 0.0], dtype=torch.float64), torch.tensor([4.0], dtype=torch.float64)  # global norm 5
    opt.step()
    assert a.detach().tolist() == pytest.approx([1.0 - 0.5 * 1.5, 2.0])
    assert b.detach().tolist() == pytest.approx([-0.5 * 2.0])
    # below the threshold: plain SGD (weight decay added before the norm is taken)
    opt = ClippedSGD([a], lr=0.5, max_norm=100.0, weight_decay=0.1)
    start = a.detach().clone()
    a.grad = torch.tensor([1.0, -1.0], dtype=torch.float64)
    opt.step()
    assert a.detach().tolist() == pytest.approx((start - 0.5 * (torch.tensor([1.0, -1.0], dtype=torch.float64) + 0.1 * start)).tolist())
    # momentum: buf = mu buf + clipped g
    c = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = ClippedSGD([c], lr=1.0, max_norm=1.0, momentum=0.5)
    for g, want in [(4.0, -1.0), (0.5, -1.0 - 1.0), (-2.0, -2.0 - (0.5 - 1.0))]:
        c.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        assert c.item() == pytest.approx(want)


def test_coord_clipped_sgd_exact_update():
    p = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = CoordClippedSGD([p], lr=2.0, threshold=0.5)
    p.grad = torch.tensor([0.1, -0.3, 2.0, -7.0], dtype=torch.float64)
    opt.step()
    assert p.detach().tolist() == pytest.approx([-0.2, 0.6, -1.0, 1.0])


def test_registered_and_config_keys():
    for name in ("acclip", "clipped_sgd", "coord_clipped_sgd"):
        assert name in OPTIMIZERS
    theta = torch.zeros(3, requires_grad=True)
    opt = OPTIMIZERS.build("acclip", {"lr": 0.2, "betas": [0.8, 0.9], "alpha": 2.0}, "optimizer", skip=("params",), params=[theta])
    assert isinstance(opt, ACClip) and opt.param_groups[0]["betas"] == (0.8, 0.9) and opt.param_groups[0]["alpha"] == 2.0
    with pytest.raises(Exception, match="allowed keys"):
        OPTIMIZERS.build("acclip", {"momentum": 0.9}, "optimizer", skip=("params",), params=[theta])


def test_worker_side_plain_training_loop_on_digits(digits):
    """ACClip as an ordinary torch optimiser: logistic regression on sklearn's digits."""
    torch.manual_seed(0)
    x, y = digits.x_train.flatten(1), digits.y_train
    model = nn.Linear(x.shape[1], digits.num_classes)
    opt = ACClip(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, x.shape[0], (64,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    with torch.no_grad():
        acc = (model(digits.x_test.flatten(1)).argmax(1) == digits.y_test).float().mean().item()
    assert acc > 0.9


def test_server_optimiser_in_a_run(digits):
    cfg = config.load(None, ["optimizer.name=acclip", "optimizer.lr=0.3", "model.name=logreg", "train.rounds=150"])
    assert cfg.optimizer == {"name": "acclip", "lr": 0.3}
    sim = Simulator(cfg, dataset=digits)
    assert isinstance(sim.optimizer, ACClip)
    _, acc0 = sim.evaluate()
    for _ in range(150):
        sim.step()
    _, acc = sim.evaluate()
    assert acc > 0.85 and acc > acc0 + 0.5
    # the run's optimiser state is checkpointed: a copy resumed from state_dict follows the same path
    state = copy.deepcopy(sim.state_dict())  # state_dict holds live optimiser tensors (the runner saves it at once)
    for _ in range(5):
        sim.step()
    other = Simulator(cfg, dataset=digits)
    other.load_state_dict(state)
    for _ in range(5):
        other.step()
    assert torch.equal(sim.theta, other.theta)


def test_stable_noise_laws():
    g = torch.Generator().manual_seed(0)
    gauss = stable_noise((200_000,), 2.0, 0.5, g)
    assert gauss.std().item() == pytest.approx(0.5 * math.sqrt(2), rel=0.02)  # alpha = 2: N(0, 2 scale^2)
    cauchy = stable_noise((200_000,), 1.0, 1.0, g)
    assert (cauchy.abs() < 1.0).float().mean().item() == pytest.approx(0.5, abs=0.01)  # Cauchy: P(|X| < 1) = 1/2
    heavy = stable_noise((200_000,), 1.2, 1.0, g)
    assert heavy.abs().max() > 100 * gauss.abs().max()
    # finite at the ends of the uniform's range (float32 pi/2 rounds past the pole: cos(-pi/2) < 0)
    v = (torch.tensor([0.0, 1.0 - 2**-24]) - 0.5) * math.pi
    w = torch.tensor([1e-8, 20.0])
    for a in (1.1, 1.5, 2.0):
        assert torch.isfinite(chambers_mallows_stuck(v, w, a)).all()


def test_noisy_simulator_pairs_noise_and_resumes(digits):
    base = ["model.name=logreg", "workers.byzantine=3", "optimizer.name=acclip"]
    a = NoisySimulator(config.load(None, base + ["attack.name=none"]), dataset=digits, noise_alpha=1.5, noise_scale=0.1)
    b = NoisySimulator(config.load(None, base + ["attack.name=sign_flip"]), dataset=digits, noise_alpha=1.5, noise_scale=0.1)
    Ga, _ = a.gradient_batch()
    Gb, _ = b.gradient_batch()
    honest = a._honest
    assert torch.equal(Ga[honest], Gb[honest])  # same honest noise whatever the attack
    clean = Simulator(config.load(None, base + ["attack.name=none"]), dataset=digits).gradient_batch()[0]
    assert not torch.allclose(Ga, clean)
    state = copy.deepcopy(a.state_dict())
    for _ in range(3):
        a.step()
    c = NoisySimulator(config.load(None, base + ["attack.name=none"]), dataset=digits, noise_alpha=1.5, noise_scale=0.1)
    c.load_state_dict(state)
    for _ in range(3):
        c.step()
    assert torch.equal(a.theta, c.theta)


def test_quick_study_picks_acclip_b2_with_its_learning_rate(tmp_path):
    """`byzlearn reproduce acclip --quick`: every row has the required keys, the picked ACClip rows say which
    b2 they used, and every part-2 run reuses the optimiser part 1 picked for its noise setting."""
    import json

    from byzlearn.experiments import reproduce

    out = reproduce.run("acclip", tmp_path / "acclip", quick=True)
    rows = json.loads((out / "results.json").read_text())
    assert all({"method", "setting", "final_test_accuracy", "best_test_accuracy"} <= set(r) for r in rows)
    picked = {(r["method"], r["setting"]["noise"]): r for r in rows if r["part"] == "noise" and r.get("picked_lr")}
    assert all(r["optimizer"]["betas"][1] in (0.99, 0.999) for (m, _), r in picked.items() if m == "acclip")
    for r in (r for r in rows if r["part"] == "attack"):
        p = picked[(r["method"], r["setting"]["noise"])]
        assert (r["optimizer"], r["setting"]["lr"]) == (p["optimizer"], p["setting"]["lr"])
    assert "b2 0.99" in (out / "results.md").read_text()

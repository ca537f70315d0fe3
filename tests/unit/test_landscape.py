"""Tier 1: flatness measures against spectra known by construction, and Dinh's rescaling."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foundation.data import load_dataset
from foundation.models import build_model
from landscape import (
    INVARIANCE,
    NOISES,
    Noise,
    closure_hvp,
    find_pairs,
    hessian_top_eigenvalues,
    hessian_trace,
    hutchinson_trace,
    local_energy,
    make_hvp,
    rescale_,
    spectral_density,
    top_eigenvalues,
)

TOP = torch.tensor([10.0, 7.0, 5.0], dtype=torch.float64)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # These models are tiny, and with two OpenMP threads on a 2-core box that is also
    # running another test process, every op waits on a spinning barrier: measured 50x
    # slower (300 SGD steps: 6.5 s instead of 0.12 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def quadratic(dim: int = 50, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A = Q diag(λ) Qᵀ with λ = 10, 7, 5 and the rest uniform in [0, 1]; returns (A, λ)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    lam = torch.cat([TOP, torch.rand(dim - 3, generator=g, dtype=torch.float64)])
    return q @ torch.diag(lam) @ q.T, lam


def gaussian_density(grid: Tensor, eigenvalues: Tensor, s: float) -> Tensor:
    kernel = torch.exp(-0.5 * ((grid[:, None] - eigenvalues[None, :]) / s) ** 2)
    return kernel.mean(dim=1) / (s * (2 * torch.pi) ** 0.5)


def bn_model() -> nn.Module:
    torch.manual_seed(3)
    model = build_model("cnn1d", (40,), 10)
    with torch.no_grad():  # move the running statistics away from their defaults
        model(torch.randn(16, 40))
    # BatchNorm (layer 2) in train mode, where any forward would move its statistics, and
    # one submodule in its own mode: every flag must come back as it was.
    model.train()
    list(model.children())[3].eval()
    return model


# ------------------------------------------------------------------ generic hvp


def test_lanczos_finds_the_top_eigenvalues_of_a_known_quadratic() -> None:
    a, _ = quadratic()
    result = top_eigenvalues(lambda v: a @ v, 50, k=3)
    assert result.converged
    assert result.steps < 50  # stopped on the residuals, not by exhausting the space
    torch.testing.assert_close(result.values, TOP, rtol=1e-3, atol=0)


def test_lanczos_restarts_to_find_a_repeated_top_eigenvalue() -> None:
    # From one start vector the Krylov space holds one copy of each eigenvalue, so it
    # breaks down after 2 steps; only the restart can find the second 3.
    a = torch.diag(torch.tensor([3.0, 1.0, 3.0, 1.0, 1.0], dtype=torch.float64))
    result = top_eigenvalues(lambda v: a @ v, 5, k=2)
    torch.testing.assert_close(result.values, torch.tensor([3.0, 3.0], dtype=torch.float64))


def test_hutchinson_is_exact_on_a_diagonal_hessian() -> None:
    # For diagonal A, vᵀAv = Σ A_ii v_i² = tr A for every Rademacher v (v_i² = 1): an exact
    # identity per sample, so the mean is the trace to rounding and the error bar is 0.
    lam = quadratic()[1]
    a = torch.diag(lam)
    estimate = hutchinson_trace(lambda v: a @ v, 50, num_samples=8)
    assert estimate.mean == pytest.approx(float(lam.sum()), rel=1e-12)
    assert estimate.stderr == pytest.approx(0.0, abs=1e-12)


def test_hutchinson_error_bar_on_a_dense_hessian() -> None:
    # For dense A the per-sample variance is 2 Σ_{i≠j} A_ij², so the reported standard
    # error must match √(that / M), and the estimate must lie within a few of them.
    a, lam = quadratic()
    m = 400
    estimate = hutchinson_trace(lambda v: a @ v, 50, num_samples=m)
    expected_se = float((2 * (a.pow(2).sum() - a.diagonal().pow(2).sum()) / m).sqrt())
    assert estimate.stderr == pytest.approx(expected_se, rel=0.15)
    assert abs(estimate.mean - float(lam.sum())) < 3 * estimate.stderr


def test_slq_density_is_exact_for_a_diagonal_hessian_with_full_lanczos() -> None:
    # Diagonal A and Rademacher probe v: the quadrature weight of λ_i is v_i²/‖v‖² = 1/n
    # exactly, and with n Lanczos steps the nodes are the eigenvalues themselves.
    lam = quadratic()[1]
    a = torch.diag(lam)
    result = spectral_density(lambda v: a @ v, 50, num_probes=2, num_steps=50, broadening=0.1)
    expected = gaussian_density(result.grid, lam, 0.1)
    torch.testing.assert_close(result.density, expected, rtol=0, atol=1e-8)
    step = float(result.grid[1] - result.grid[0])
    assert float(result.density.sum()) * step == pytest.approx(1.0, abs=1e-3)


def test_full_lanczos_recovers_every_eigenvalue_of_a_dense_quadratic() -> None:
    # n steps on an n-dimensional operator: T is similar to A, so its eigenvalues (the
    # quadrature nodes) are A's. Without reorthogonalization, converged eigenvalues come
    # back as duplicates ("ghosts") and others go missing.
    a, lam = quadratic()
    result = spectral_density(lambda v: a @ v, 50, num_probes=1, num_steps=50)
    torch.testing.assert_close(result.nodes.sort().values, lam.sort().values, rtol=0, atol=1e-8)
    assert float(result.weights.sum()) == pytest.approx(1.0, abs=1e-12)


def test_slq_density_shows_the_outliers_of_a_dense_quadratic() -> None:
    a, _ = quadratic()
    result = spectral_density(lambda v: a @ v, 50, num_probes=8, num_steps=30, broadening=0.05)
    step = float(result.grid[1] - result.grid[0])
    assert float(result.density.sum()) * step == pytest.approx(1.0, abs=1e-3)
    d = result.density
    is_peak = (d[1:-1] > d[:-2]) & (d[1:-1] > d[2:]) & (result.grid[1:-1] > 2.0)
    peaks = result.grid[1:-1][is_peak]
    torch.testing.assert_close(peaks, TOP.flip(0), rtol=0, atol=0.02)


# ------------------------------------------------------------------ the module interface


def test_module_hvp_matches_the_autograd_hessian() -> None:
    # A tanh net (non-zero second derivatives everywhere) and a chunk size that leaves a
    # short last chunk: the chunk weighting n_c / n must reproduce the full-batch Hessian.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(23, 4, dtype=torch.float64), torch.randint(0, 3, (23,))
    params = dict(model.named_parameters())
    names, shapes = list(params), [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]

    def loss_of(flat: Tensor) -> Tensor:
        pieces = torch.split(flat, sizes)
        weights = {n: t.view(s) for n, t, s in zip(names, pieces, shapes, strict=True)}
        return F.cross_entropy(torch.func.functional_call(model, weights, (x,)), y)

    w = torch.cat([p.detach().reshape(-1) for p in params.values()])
    exact = torch.autograd.functional.hessian(loss_of, w)
    v = torch.randn(len(w), dtype=torch.float64)
    torch.testing.assert_close(make_hvp(model, x, y, chunk_size=5)(v), exact @ v)


def test_module_hvp_leaves_batchnorm_statistics_and_modes_alone() -> None:
    model = bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    x, y = torch.randn(30, 40), torch.randint(0, 10, (30,))
    hv = make_hvp(model, x, y, chunk_size=8)(
        torch.randn(sum(p.numel() for p in model.parameters()))
    )
    assert bool(torch.isfinite(hv).all()) and float(hv.abs().max()) > 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert [m.training for m in model.modules()] == modes


def test_closure_hvp_of_a_quadratic_is_its_matrix() -> None:
    a, _ = quadratic()
    w = torch.randn(50, dtype=torch.float64, requires_grad=True)
    hvp = closure_hvp(lambda: 0.5 * w @ a @ w, [w])
    v = torch.randn(50, dtype=torch.float64)
    torch.testing.assert_close(hvp(v), a @ v)
    result = top_eigenvalues(hvp, 50, k=3)
    torch.testing.assert_close(result.values, TOP, rtol=1e-3, atol=0)


def linear_mse(n: int, d: int, x: Tensor) -> tuple[nn.Module, Tensor, Tensor]:
    """Linear(d, 1) with MSE: L = (1/n) Σ (wᵀx + b − y)², so H = (2/n) ZᵀZ, Z = [X, 1]."""
    model = nn.Linear(d, 1)
    z = torch.cat([x, torch.ones(n, 1)], dim=1).double()
    hessian = 2.0 / n * z.T @ z
    return model, hessian, torch.randn(n, 1)


def test_module_top_eigenvalues_of_a_linear_least_squares() -> None:
    torch.manual_seed(1)
    n, d = 40, 6
    x = torch.randn(n, d) * torch.tensor([3.0, 2.0, 1.5, 1.0, 0.5, 0.2])
    model, hessian, y = linear_mse(n, d, x)
    result = hessian_top_eigenvalues(model, x, y, k=3, loss_fn=F.mse_loss, chunk_size=7)
    expected = torch.linalg.eigvalsh(hessian).flip(0)[:3]
    assert result.converged
    torch.testing.assert_close(result.values, expected, rtol=1e-3, atol=0)


def test_module_trace_of_a_linear_least_squares_with_orthogonal_inputs() -> None:
    # Columns of Z = [X, 1] orthogonal (QR with ones as the first column) make H diagonal,
    # so Hutchinson's estimate is exact per sample, as in the generic test.
    n, d = 40, 6
    g = torch.Generator().manual_seed(2)
    raw = torch.cat([torch.ones(n, 1), torch.randn(n, d, generator=g)], dim=1)
    q, _ = torch.linalg.qr(raw)
    x = q[:, 1:] * torch.tensor([9.0, 7.0, 5.0, 3.0, 2.0, 1.0])
    model, hessian, y = linear_mse(n, d, x)
    assert torch.allclose(hessian, torch.diag(hessian.diagonal()), atol=1e-5)
    estimate = hessian_trace(model, x, y, num_samples=4, loss_fn=F.mse_loss, chunk_size=9)
    assert estimate.mean == pytest.approx(float(hessian.trace()), rel=1e-5)
    assert estimate.stderr < 1e-5 * estimate.mean


# ------------------------------------------------------------------ local energy

SIGMAS = [0.0, 0.05, 0.1, 0.2]


@pytest.fixture(scope="module")
def mnist1d(data_root: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    ds = load_dataset("mnist1d", data_root)
    return ds.train.x, ds.train.y, ds.test.x, ds.test.y


@pytest.fixture(scope="module")
def trained_mlp(mnist1d: tuple[Tensor, Tensor, Tensor, Tensor]) -> nn.Module:
    """The MNIST-1D mlp after 300 SGD steps (lr 0.1, batch 100): a point near a minimum."""
    x, y = mnist1d[0], mnist1d[1]
    torch.manual_seed(0)
    model = build_model("mlp", (40,), 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, len(y), (100,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model


def test_local_energy_is_zero_at_zero_and_grows_with_sigma(
    trained_mlp: nn.Module, mnist1d: tuple[Tensor, Tensor, Tensor, Tensor]
) -> None:
    for x, y in (mnist1d[:2], mnist1d[2:]):  # train, then test
        for noise in NOISES:
            result = local_energy(trained_mlp, x, y, SIGMAS, noise=noise, num_samples=20)
            assert result.loss_delta[0] == 0.0 and result.loss_delta_se[0] == 0.0
            assert result.error_delta[0] == 0.0
            assert bool((result.loss_delta.diff() > 0).all()), (noise, result.loss_delta)
            # A shake of 20% is clearly felt, well beyond the Monte-Carlo error.
            assert result.loss_delta[-1] > 3 * result.loss_delta_se[-1]


def test_local_energy_restores_weights_buffers_and_modes_bit_exactly() -> None:
    model = bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    x, y = torch.randn(30, 40), torch.randint(0, 10, (30,))
    for noise in NOISES:
        local_energy(model, x, y, [0.1, 0.5], noise=noise, num_samples=3, chunk_size=8)
    calls = 0

    def failing_loss(out: Tensor, target: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        if calls == 3:  # fail mid-sweep, while the weights are perturbed
            raise RuntimeError("boom")
        return F.cross_entropy(out, target)

    with pytest.raises(RuntimeError, match="boom"):
        local_energy(model, x, y, [0.5], num_samples=3, loss_fn=failing_loss)
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert [m.training for m in model.modules()] == modes


class Probe(nn.Module):
    """Logits from one weight vector; records the weight and buffer each forward sees."""

    def __init__(self) -> None:
        super().__init__()
        w = torch.linspace(-1.0, 1.0, 1001)[:1000]
        w[::10] = 0.0  # exact zeros: multiplicative noise must leave them at 0
        self.w = nn.Parameter(w)
        self.stat: Tensor
        self.register_buffer("stat", torch.ones(3))
        self.seen: list[tuple[Tensor, Tensor]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append((self.w.detach().clone(), self.stat.clone()))
        return x * self.w[:2].sum()


@pytest.mark.parametrize("noise", ["multiplicative", "additive"])
def test_local_energy_shakes_parameters_only_with_the_stated_noise(noise: Noise) -> None:
    model = Probe()
    w0 = model.w.detach().clone()
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    local_energy(model, x, y, [0.1, 0.3], noise=noise, num_samples=4)
    assert all(torch.equal(stat, torch.ones(3)) for _, stat in model.seen)
    nonzero = w0 != 0
    # The change in the scale σ is drawn from: relative for w' = w (1 + σ z), where exact
    # zeros stay zero; absolute for w' = w + σ z.
    scale = torch.where(nonzero, w0, 1.0) if noise == "multiplicative" else torch.ones(1)
    scaled = [(w - w0) / scale for w, _ in model.seen[1:]]
    if noise == "multiplicative":
        assert all(torch.equal(d[~nonzero], torch.zeros_like(d[~nonzero])) for d in scaled)
        scaled = [d[nonzero] for d in scaled]
    spreads = torch.tensor([float(d.std()) for d in scaled])
    assert len(spreads) == 8
    assert bool((((spreads - 0.1).abs() < 0.01) | ((spreads - 0.3).abs() < 0.03)).all())
    # Common random numbers: each σ = 0.3 shake is the same z as one σ = 0.1 shake.
    small = [d for d, s in zip(scaled, spreads, strict=True) if s < 0.2]
    large = [d for d, s in zip(scaled, spreads, strict=True) if s >= 0.2]
    assert len(small) == len(large) == 4
    for d in large:
        assert any(torch.allclose(d, 3 * e, rtol=1e-4, atol=1e-6) for e in small)


# ------------------------------------------------------------------ Dinh's α-rescaling


def test_find_pairs_of_the_mlp() -> None:
    assert find_pairs(build_model("mlp", (40,), 10)) == [(1, 3), (3, 5)]


def test_rescaling_keeps_the_mlp_predictions(
    trained_mlp: nn.Module, mnist1d: tuple[Tensor, Tensor, Tensor, Tensor]
) -> None:
    x = mnist1d[2]
    for alpha in (10.0, 0.1):
        model = copy.deepcopy(trained_mlp)
        rescale_(model, alpha)
        first, original = model.get_submodule("1"), trained_mlp.get_submodule("1")
        assert isinstance(first, nn.Linear) and isinstance(original, nn.Linear)
        assert torch.allclose(first.weight, alpha * original.weight)  # it did act
        with torch.no_grad():
            difference = (model(x) - trained_mlp(x)).abs().max()
        assert float(difference) < 1e-5


def test_rescaling_leaves_the_multiplicative_local_energy_unchanged(
    trained_mlp: nn.Module, mnist1d: tuple[Tensor, Tensor, Tensor, Tensor]
) -> None:
    x, y = mnist1d[0][:1000], mnist1d[1][:1000]
    rescaled = copy.deepcopy(trained_mlp)
    rescale_(rescaled, 10.0)
    # Same seed, same parameter layout, so both see the same z. Multiplicative noise
    # commutes with the rescaling: (α w)(1 + σ z) = α (w (1 + σ z)), i.e. the perturbed
    # rescaled net IS the rescaled perturbed net, the same function. So the two agree
    # draw by draw, to float rounding, not merely within Monte-Carlo error.
    cases: list[tuple[Noise, bool]] = [("multiplicative", True), ("additive", False)]
    for noise, invariant in cases:
        assert INVARIANCE[f"local_energy_{noise}"] is invariant
        a = local_energy(trained_mlp, x, y, SIGMAS, noise=noise, num_samples=10, seed=7)
        b = local_energy(rescaled, x, y, SIGMAS, noise=noise, num_samples=10, seed=7)
        close = torch.allclose(a.loss_delta, b.loss_delta, rtol=1e-3, atol=1e-5)
        # The additive form is the control: the same z on a layer shrunk by 1/α hits hard.
        assert close is invariant, (noise, a.loss_delta, b.loss_delta)


def test_rescaling_moves_the_top_hessian_eigenvalue(
    trained_mlp: nn.Module, mnist1d: tuple[Tensor, Tensor, Tensor, Tensor]
) -> None:
    x, y = mnist1d[0][:1000], mnist1d[1][:1000]
    rescaled = copy.deepcopy(trained_mlp)
    rescale_(rescaled, 10.0)
    before = hessian_top_eigenvalues(trained_mlp, x, y).values[0]
    after = hessian_top_eigenvalues(rescaled, x, y).values[0]
    assert INVARIANCE["hessian_top_eigenvalue"] is False
    assert float(after / before) > 5.0, (before, after)


def test_rescale_refuses_a_non_homogeneous_middle_layer() -> None:
    tanh = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    before = copy.deepcopy(tanh.state_dict())
    with pytest.raises(ValueError, match=r"layer 1 \(Tanh\).*not positively homogeneous"):
        rescale_(tanh, 2.0)
    assert all(torch.equal(v, tanh.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match=r"BatchNorm1d.*normalizes"):
        rescale_(build_model("cnn1d", (40,), 10), 2.0)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        rescale_(build_model("mlp", (40,), 10), -1.0)

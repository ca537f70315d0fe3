"""Tier 1: the coupling updates against numbers computed by hand from docs/algorithms.md."""

import torch

from flatmath import coupling

T = torch.tensor


def close(a: torch.Tensor, b: list[float] | list[list[float]]) -> bool:
    return torch.allclose(a, T(b, dtype=a.dtype), atol=1e-6, rtol=0)


def test_center_is_the_mean_of_the_rows() -> None:
    assert close(coupling.center(T([[0.0, 0.0], [3.0, 6.0], [6.0, 3.0]])), [3.0, 3.0])
    assert close(coupling.center(T([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])), [2.0, 3.0, 4.0])


def test_squared_distances_by_hand() -> None:
    replicas = T([[1.0, 2.0], [3.0, 0.0]])
    assert close(coupling.squared_distances(replicas, T([2.0, 1.0])), [2.0, 2.0])


def test_rsgd_pull_by_hand() -> None:
    # η K γ = 0.1 · 5 · 0.4 = 0.2;  w − 0.2 (w − w̄)
    w, c = T([1.0, 2.0, 4.0]), T([2.0, 2.0, 2.0])
    assert close(coupling.rsgd_pull(w, c, lr=0.1, period=5, gamma=0.4), [1.2, 2.0, 3.6])
    assert close(w, [1.0, 2.0, 4.0]), "the out-of-place form must not touch its input"
    coupling.rsgd_pull_(w, c, lr=0.1, period=5, gamma=0.4)
    assert close(w, [1.2, 2.0, 3.6])


def test_gamma_zero_leaves_replicas_alone() -> None:
    w, c = T([1.0, -3.0]), T([5.0, 5.0])
    assert torch.equal(coupling.rsgd_pull(w, c, lr=0.1, period=10, gamma=0.0), w)
    before = w.clone()
    coupling.easgd_exchange_(w, c.clone(), alpha=0.1 * 0.0)
    assert torch.equal(w, before)


def test_rsgd_with_k1_is_a_gradient_step_on_the_replicated_loss() -> None:
    # L(w) = Σ sin(w) + ½ w², a non-trivial loss; L_R = Σ_a L(w^a) + γ Σ_a ½‖w^a − w̄‖².
    torch.manual_seed(0)
    replicas = torch.randn(3, 4, dtype=torch.float64)
    lr, gamma = 0.05, 0.7

    def loss(w: torch.Tensor) -> torch.Tensor:
        return w.sin().sum() + 0.5 * w.pow(2).sum()

    w_r = replicas.clone().requires_grad_(True)
    w_bar = w_r.mean(dim=0)
    replicated = sum(loss(w_r[a]) for a in range(3)) + gamma * 0.5 * (w_r - w_bar).pow(2).sum()
    (grad_r,) = torch.autograd.grad(replicated, w_r)
    expected = replicas - lr * grad_r

    center = coupling.center(replicas)
    for a in range(3):
        w = replicas[a].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(w), w)
        got = coupling.rsgd_pull(replicas[a], center, lr=lr, period=1, gamma=gamma) - lr * g
        assert torch.allclose(got, expected[a], atol=1e-12)


def test_easgd_exchange_by_hand_and_conserved() -> None:
    w, w_tilde = T([1.0, 3.0]), T([0.0, 1.0])
    d = coupling.easgd_exchange_(w, w_tilde, alpha=0.5)
    assert close(d, [0.5, 1.0]) and close(w, [0.5, 2.0]) and close(w_tilde, [0.5, 2.0])


def test_easgd_sync_by_hand_and_conserves_the_sum() -> None:
    replicas, w_tilde = T([[1.0, 2.0], [3.0, 0.0]]), T([1.0, 1.0])
    total = replicas.sum(0) + w_tilde
    diffs = coupling.easgd_sync_(replicas, w_tilde, alpha=0.25)
    assert close(diffs, [[0.0, 0.25], [0.5, -0.25]])
    assert close(replicas, [[1.0, 1.75], [2.5, 0.25]])
    assert close(w_tilde, [1.5, 1.0])
    assert torch.allclose(replicas.sum(0) + w_tilde, total)


def test_easgd_conservation_on_random_replicas() -> None:
    torch.manual_seed(1)
    replicas, w_tilde = torch.randn(5, 7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    for _ in range(10):
        total = replicas.sum(0) + w_tilde
        coupling.easgd_sync_(replicas, w_tilde, alpha=0.15)
        assert torch.allclose(replicas.sum(0) + w_tilde, total, atol=1e-12)
        replicas += 0.1 * torch.randn_like(replicas)  # local steps move replicas between rounds
    one, center = torch.randn(7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    before = one + center
    coupling.easgd_exchange_(one, center, alpha=0.3)
    assert torch.allclose(one + center, before, atol=1e-12)


def test_split_easgd_halves_equal_the_synchronous_update() -> None:
    torch.manual_seed(2)
    replicas, w_tilde = torch.randn(4, 6), torch.randn(6)
    ref_r, ref_c = replicas.clone(), w_tilde.clone()
    coupling.easgd_sync_(ref_r, ref_c, alpha=0.2)
    old_center = w_tilde.clone()
    coupling.easgd_center_update_(w_tilde, replicas, alpha=0.2)
    for a in range(4):  # each replica's own half, against the same old center
        replicas[a] -= 0.2 * (replicas[a] - old_center)
    assert torch.allclose(replicas, ref_r, atol=1e-6) and torch.allclose(w_tilde, ref_c, atol=1e-6)


def test_parle_outer_step_by_hand() -> None:
    # g = (w − μ) + ρ (w − w̄) = [1, 0] + 2·[−1, 2] = [−1, 4];  w − 0.5 g = [1.5, 0]
    w, mu, c = T([1.0, 2.0]), T([0.0, 2.0]), T([2.0, 0.0])
    assert close(coupling.parle_direction(w, mu, c, rho=2.0), [-1.0, 4.0])
    assert close(coupling.parle_outer_step(w, mu, c, lr=0.5, rho=2.0), [1.5, 0.0])


def test_parle_with_rho_zero_is_the_entropy_sgd_outer_step() -> None:
    w, mu, c = T([1.0, 2.0]), T([0.5, 1.0]), T([100.0, -100.0])
    assert close(coupling.parle_outer_step(w, mu, c, lr=0.4, rho=0.0), [0.8, 1.6])


def test_bad_shapes_are_refused() -> None:
    import pytest

    with pytest.raises(ValueError, match="stack"):
        coupling.center(T([1.0, 2.0]))
    with pytest.raises(ValueError, match="no replicas"):
        coupling.center([])


def test_a_list_of_rows_gives_what_the_stack_gives() -> None:
    torch.manual_seed(3)
    stack = torch.randn(3, 5, dtype=torch.float64)
    rows = [stack[a] for a in range(3)]
    assert torch.allclose(coupling.center(rows), coupling.center(stack), atol=1e-15)
    c = coupling.center(stack)
    assert torch.allclose(coupling.squared_distances(rows, c), coupling.squared_distances(stack, c))
    assert torch.allclose(
        coupling.squared_distances(rows, c[:2]), (stack[:, :2] - c[:2]).pow(2).sum(1)
    )
    a, b = c.clone(), c.clone()
    coupling.easgd_center_update_(a, rows, 0.1)
    coupling.easgd_center_update_(b, stack, 0.1)
    assert torch.allclose(a, b, atol=1e-15)


def test_diloco_outer_step_by_hand_over_two_rounds() -> None:
    # θ = [1, 2], replicas' mean after round 1 = [0, 3]: Δ = [1, −1]; m = 0.5, η = 0.7
    # round 1: b = Δ = [1, −1];  d = Δ + 0.5 b = [1.5, −1.5];  θ = [1, 2] − 0.7 d = [−0.05, 3.05]
    theta, buf = T([1.0, 2.0]), torch.zeros(2)
    coupling.diloco_outer_step_(theta, T([[0.0, 2.0], [0.0, 4.0]]), buf, lr=0.7, momentum=0.5)
    assert torch.allclose(theta, T([-0.05, 3.05])) and torch.allclose(buf, T([1.0, -1.0]))
    # round 2: mean = [−0.05, 3.05] + [−0.2, 0.2] → Δ = [0.2, −0.2]; b = 0.5·[1, −1] + Δ
    #          = [0.7, −0.7]; d = Δ + 0.5 b = [0.55, −0.55]; θ = θ − 0.7 d = [−0.435, 3.435]
    mean = theta + T([-0.2, 0.2])
    coupling.diloco_outer_step_(theta, torch.stack([mean, mean]), buf, lr=0.7, momentum=0.5)
    assert torch.allclose(theta, T([-0.435, 3.435]))


def test_local_sgd_outer_step_is_averaging() -> None:
    theta = T([1.0, 2.0])
    coupling.diloco_outer_step_(theta, T([[0.0, 1.0], [2.0, 5.0]]), None, lr=1.0, momentum=0.0)
    assert torch.equal(theta, T([1.0, 3.0]))

"""Architecture gradients of the recurrent supernet against autograd of an independent re-implementation.

The reference below re-writes the search cell from the formulas (DARTS Sec. 3.1.2, docs/recurrent.md):
the initial state, every edge s_p + sigmoid(c) * (f(g) - s_p) mixed by softmax(alpha), batch
normalisation without affine parameters (batch statistics), the mean of the nodes, the tied decoder.
First order: grad_alpha L_val(w, alpha). Second order: the gradient of the unrolled objective
L_val(w - xi (grad_w L_train(w, alpha) + wd w), alpha), by autograd through the inner gradient
(create_graph), which the architect approximates by finite differences (Eq. 7-8).
"""

import torch

from nasir.rnn.architect import RecurrentArchitect
from nasir.rnn.cell import SearchLM
from nasir.rnn.space import LanguageModel, SearchSpace

OPS = ("none", "tanh", "relu", "sigmoid", "identity")
ACT = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda x: x}
NODES, H, V, T, B = 3, 3, 7, 4, 5


def _bn(x):
    return (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5)


def reference_loss(p, alpha, words, targets, h):
    E, bias, W0, Ws = p["encoder.weight"], p["decoder.bias"], p["cell.W0"], [p[f"cell.Ws.{i}"] for i in range(NODES)]
    probs = torch.softmax(alpha, -1)
    outs = []
    for t in range(words.shape[0]):
        x = E[words[t]]
        z = torch.cat([x, h], 1) @ W0
        s0 = _bn(h + torch.sigmoid(z[:, :H]) * (torch.tanh(z[:, H:]) - h))
        states, row = [s0], 0
        for i in range(1, NODES + 1):
            total = torch.zeros_like(s0)
            for src in range(i):
                s = states[src]
                z = s @ Ws[i - 1]
                for k, op in enumerate(OPS):
                    if op != "none":
                        total = total + probs[row, k] * (s + torch.sigmoid(z[:, :H]) * (ACT[op](z[:, H:]) - s))
                row += 1
            states.append(_bn(total))
        h = sum(states[1:]) / NODES
        outs.append(h)
    logits = torch.stack(outs) @ E.t() + bias
    return torch.nn.functional.cross_entropy(logits.reshape(-1, V), targets), h


def _setup(seed=0):
    torch.manual_seed(seed)
    lm = LanguageModel(tokens=V, ninp=H, nhid=H, dropout=0, dropouth=0, dropoutx=0, dropouti=0, dropoute=0)
    model = SearchLM(lm, SearchSpace(nodes=NODES)).double()
    with torch.no_grad():
        model.alpha.normal_(0, 0.5)
        for p in model.weight_parameters():
            p.uniform_(-0.6, 0.6)
    g = torch.Generator().manual_seed(seed + 1)
    batch = lambda: (torch.randint(0, V, (T, B), generator=g), torch.randint(0, V, (T * B,), generator=g))  # noqa: E731
    train, valid = batch(), batch()
    h_train = 0.3 * torch.randn(B, H, generator=g, dtype=torch.double)
    h_valid = 0.3 * torch.randn(B, H, generator=g, dtype=torch.double)
    return model, train, valid, h_train, h_valid


def test_first_order_gradient_and_carried_state_match_reference():
    model, train, valid, h_train, h_valid = _setup()
    params = {n: p.detach().clone() for n, p in model.named_parameters() if n != "alpha"}
    alpha = model.alpha.detach().clone().requires_grad_(True)
    loss, h_ref = reference_loss(params, alpha, *valid, h_valid)
    (expected,) = torch.autograd.grad(loss, alpha)
    arch = RecurrentArchitect(model, order=1)
    grads, got_loss, h_next = arch.gradient(train, h_train, valid, h_valid, xi=0.1)
    assert torch.allclose(got_loss, loss.detach(), atol=1e-12)
    assert torch.allclose(grads[0], expected, atol=1e-10, rtol=1e-8)
    assert torch.allclose(h_next, h_ref.detach(), atol=1e-12)  # the state the validation stream carries on
    assert expected.abs().max() > 1e-4  # the check is not vacuous


def test_second_order_gradient_matches_unrolled_objective():
    model, train, valid, h_train, h_valid = _setup(3)
    xi, wd = 0.5, 1e-2
    names = [n for n, _ in model.named_parameters() if n != "alpha"]
    w = [model.get_parameter(n).detach().clone().requires_grad_(True) for n in names]
    alpha = model.alpha.detach().clone().requires_grad_(True)
    lt, _ = reference_loss(dict(zip(names, w)), alpha, *train, h_train)
    gw = torch.autograd.grad(lt, w, create_graph=True)
    w_prime = {n: wi - xi * (g + wd * wi) for n, wi, g in zip(names, w, gw)}
    lv, _ = reference_loss(w_prime, alpha, *valid, h_valid)
    (exact,) = torch.autograd.grad(lv, alpha)
    (direct,) = torch.autograd.grad(reference_loss({n: v.detach() for n, v in w_prime.items()}, alpha, *valid, h_valid)[0], alpha)

    arch = RecurrentArchitect(model, order=2, w_weight_decay=wd, clip=1e9, fd_radius=1e-4)
    before = [p.detach().clone() for p in model.weight_parameters()]
    grads, _, _ = arch.gradient(train, h_train, valid, h_valid, xi=xi)
    assert torch.allclose(grads[0], exact, atol=1e-7, rtol=1e-5)
    assert (exact - direct).abs().max() > 1e-4  # the implicit term matters here, so first order would fail
    assert all(torch.equal(a, b) for a, b in zip(before, model.weight_parameters()))  # w restored


def test_second_order_with_binding_clip_follows_the_authors():
    """With the clip binding, w' takes the clipped step c * grad_w L_train, and the finite-difference
    direction v = grad_w' L_val is clipped too (the authors' architect), which scales the implicit term by
    its factor c_v: expected = direct + c_v * (exact - direct), with exact the unrolled objective's gradient."""
    model, train, valid, h_train, h_valid = _setup(5)
    xi, clip = 0.5, 0.05
    names = [n for n, _ in model.named_parameters() if n != "alpha"]
    w = [model.get_parameter(n).detach().clone().requires_grad_(True) for n in names]
    alpha = model.alpha.detach().clone().requires_grad_(True)
    lt, _ = reference_loss(dict(zip(names, w)), alpha, *train, h_train)
    gw = torch.autograd.grad(lt, w, create_graph=True)
    c = min(1.0, clip / (float(torch.sqrt(sum((g.detach() ** 2).sum() for g in gw))) + 1e-6))
    w_prime = {n: wi - xi * c * g for n, wi, g in zip(names, w, gw)}
    lv, _ = reference_loss(w_prime, alpha, *valid, h_valid)
    (exact,) = torch.autograd.grad(lv, alpha)
    wp = {n: v.detach().requires_grad_(True) for n, v in w_prime.items()}
    a2 = alpha.detach().clone().requires_grad_(True)
    g_all = torch.autograd.grad(reference_loss(wp, a2, *valid, h_valid)[0], [a2, *wp.values()])
    direct = g_all[0]
    c_v = min(1.0, clip / (float(torch.sqrt(sum((g**2).sum() for g in g_all[1:]))) + 1e-6))
    assert c < 1 and c_v < 1  # both clips bind in this case
    arch = RecurrentArchitect(model, order=2, w_weight_decay=0.0, clip=clip, fd_radius=1e-4)
    grads, _, _ = arch.gradient(train, h_train, valid, h_valid, xi=xi)
    assert torch.allclose(grads[0], direct + c_v * (exact - direct), atol=1e-8, rtol=1e-5)
    assert not torch.allclose(grads[0], exact, atol=1e-6, rtol=1e-3)

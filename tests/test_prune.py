"""fr.prune: couplings read from a module's dataflow, shrink's smaller copy (equal outputs
in eval mode, constants folded, BatchNorm statistics sliced), refusals, and after_step.

Each model is small and built here (an HF-style attention module included, no download);
equality is checked with torch.func.functional_call on inputs other than the example ones.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import funcreg as fr


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _same_function(model, params, small, small_params, *inputs, atol=1e-5) -> None:
    model.eval()
    with torch.no_grad():
        want = functional_call(model, params, inputs)
        got = functional_call(small.eval(), small_params, inputs)
    torch.testing.assert_close(got, want, atol=atol, rtol=1e-5)


def _zero(params, path, index, dim=0) -> None:
    params[path].index_fill_(dim, torch.tensor(index), 0.0)


# ------------------------------------------------------------------------------ models
def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.Sigmoid(), nn.Linear(5, 3))


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 4 * 4, 10))


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
        self.c1, self.bn1 = nn.Conv2d(8, 5, 3, padding=1), nn.BatchNorm2d(5)
        self.c2, self.bn2 = nn.Conv2d(5, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.bn1(self.c1(x)))
        x = F.relu(x + self.bn2(self.c2(y)))
        return self.fc(x.mean((2, 3)))


class _HFAttention(nn.Module):
    """Separate q/k/v/o projections, as in Hugging Face models."""

    def __init__(self, hidden: int = 16, num_heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden // num_heads
        self.q_proj, self.k_proj = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.v_proj, self.o_proj = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(a.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class _Block(nn.Module):
    """A pre-norm transformer block: attention and an MLP on a LayerNorm'd residual stream."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(hidden), _HFAttention(hidden)
        self.ln2, self.fc1, self.fc2 = nn.LayerNorm(hidden), nn.Linear(hidden, 32), nn.Linear(32, hidden)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class _MHA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.out = nn.Linear(16, 3)

    def forward(self, x, pad):
        h = self.inp(x)
        a, _ = self.attn(h, h, h, key_padding_mask=pad, need_weights=False)
        return self.out(F.layer_norm(h + a, (16,)))


# --------------------------------------------------------------------------- couplings
def test_couplings_of_an_mlp_never_the_output() -> None:
    got = fr.prune.couplings(_mlp(), torch.randn(2, 6))
    assert got == [fr.Coupling({"0.weight": 0, "0.bias": 0}, groups=8),
                   fr.Coupling({"2.weight": 0, "2.bias": 0}, groups=5)]


def test_couplings_of_a_cnn_with_batchnorm_and_flatten_leave_modes_alone() -> None:
    model = _cnn().train()
    got = fr.prune.couplings(model, torch.randn(2, 1, 8, 8))
    assert got == [fr.Coupling({"0.weight": 0, "0.bias": 0, "1.weight": 0, "1.bias": 0}, groups=4),
                   fr.Coupling({"3.weight": 0, "3.bias": 0, "4.weight": 0, "4.bias": 0}, groups=6)]
    assert model.training and all(m.training for m in model.modules())
    assert float(model[1].running_mean.abs().sum()) == 0.0  # the analysis ran in eval mode


def test_couplings_of_a_residual_block_span_every_layer_added() -> None:
    got = fr.prune.couplings(_Residual(), torch.randn(2, 3, 8, 8))
    assert got == [
        fr.Coupling({"stem.weight": 0, "stem.bias": 0, "c2.weight": 0, "c2.bias": 0,
                     "bn0.weight": 0, "bn0.bias": 0, "bn2.weight": 0, "bn2.bias": 0}, groups=8),
        fr.Coupling({"c1.weight": 0, "c1.bias": 0, "bn1.weight": 0, "bn1.bias": 0}, groups=5),
    ]


def test_couplings_of_attention_heads_and_mlp_units() -> None:
    got = fr.prune.couplings(_Block(), torch.randn(2, 5, 16))
    heads = {f"attn.{n}_proj.{p}": 0 for n in "qkv" for p in ("weight", "bias")}
    # the residual stream is LayerNorm'd: its channels are not prunable
    assert got == [fr.Coupling(heads, groups=4), fr.Coupling({"fc1.weight": 0, "fc1.bias": 0}, groups=32)]
    got = fr.prune.couplings(_MHA(), torch.randn(2, 5, 8), torch.zeros(2, 5, dtype=torch.bool))
    assert got == [fr.Coupling({"attn.out_proj.weight": 1}, groups=4)]


# ------------------------------------------------------------------------------ shrink
def test_shrink_mlp_folds_a_sigmoid_units_live_bias() -> None:
    torch.manual_seed(0)
    model, x = _mlp(), torch.randn(4, 6)
    params = _params(model)
    _zero(params, "2.weight", [1, 3])  # sigmoid units 1 and 3: constant sigmoid(bias) != 0
    _zero(params, "0.weight", [0])
    params["0.bias"][0] = -1.0  # relu(-1) = 0: nothing to fold
    before = {k: v.clone() for k, v in params.items()}
    cs = fr.prune.couplings(model, x)
    small, small_params = result = fr.prune.shrink(model, params, cs, x)
    assert (small[0].out_features, small[2].in_features, small[2].out_features, small[4].in_features) == (7, 7, 3, 3)
    assert small_params["4.bias"].shape == (3,) and not torch.equal(small_params["4.bias"], params["4.bias"])
    assert [len(c.removed) for c in result.report.couplings] == [1, 2]
    _same_function(model, params, small, small_params, torch.randn(9, 6))
    assert all(torch.equal(before[k], params[k]) for k in params)  # inputs untouched
    assert model[0].out_features == 8


def test_shrink_cnn_slices_batchnorm_statistics_and_flatten_blocks() -> None:
    torch.manual_seed(1)
    model, x = _cnn(), torch.randn(3, 1, 8, 8)
    _randomize_bn(model)
    params = _params(model)
    _zero(params, "0.weight", [2])  # its BN shift through relu is folded into conv 3 (no padding)
    params["1.bias"][2] = 3.0  # a positive shift: relu lets a nonzero constant through
    _zero(params, "3.weight", [0, 4])  # read by the Linear as two blocks of 16 columns
    small, small_params = fr.prune.shrink(model, params, fr.prune.couplings(model, x), x)
    assert small[0].out_channels == 3 and small[3].in_channels == 3 and small[4].num_features == 4
    assert small[7].in_features == 4 * 16
    torch.testing.assert_close(small[1].running_mean, model[1].running_mean[[0, 1, 3]])
    torch.testing.assert_close(small[4].running_var, model[4].running_var[[1, 2, 3, 5]])
    assert small_params["7.weight"].shape == (10, 64)
    assert not torch.allclose(small_params["3.bias"], params["3.bias"][[1, 2, 3, 5]])  # folded
    _same_function(model, params, small, small_params, torch.randn(5, 1, 8, 8))


def test_shrink_residual_removes_tied_channels_and_keeps_a_constant_under_zero_padding() -> None:
    torch.manual_seed(2)
    model, x = _Residual(), torch.randn(2, 3, 8, 8)
    _randomize_bn(model)
    params = _params(model)
    for path in ("stem.weight", "c2.weight"):
        _zero(params, path, [1, 6])
    # channel 1: every producer's shift is negative, so relu gives 0 after the add: removable
    # channel 6: a positive constant, read by c1, which pads with zeros: kept and reported
    for bn in ("bn0", "bn2"):
        params[f"{bn}.bias"][1], params[f"{bn}.weight"][1] = -5.0, 0.1
        params[f"{bn}.bias"][6] = 2.0
    small, small_params = result = fr.prune.shrink(model, params, fr.prune.couplings(model, x), x)
    first = result.report.couplings[0]
    assert first.removed == (1,) and [g for g, _ in first.kept_zero] == [6]
    assert "pads with zeros" in first.kept_zero[0][1] and "c1" in first.kept_zero[0][1]
    assert small.stem.out_channels == small.c2.out_channels == small.c1.in_channels == 7
    assert small.fc.in_features == 7 and small.bn2.running_mean.shape == (7,)
    assert "kept zero group 6" in str(result.report)
    _same_function(model, params, small, small_params, torch.randn(3, 3, 8, 8))


def test_shrink_attention_heads_fold_v_bias_and_update_the_head_count() -> None:
    torch.manual_seed(3)
    model, x = _Block(), torch.randn(2, 5, 16)
    params = _params(model)
    for n in "qkv":  # head 2's incoming weights: its output is v's bias, folded into o_proj
        params[f"attn.{n}_proj.weight"][8:12] = 0.0
    _zero(params, "fc1.weight", [3, 7, 30])
    small, small_params = result = fr.prune.shrink(model, params, fr.prune.couplings(model, x), x)
    assert small.attn.num_heads == 3 and small.attn.q_proj.out_features == 12
    assert small.attn.o_proj.in_features == 12 and small.fc2.in_features == 29
    assert [c.removed for c in result.report.couplings] == [(2,), (3, 7, 30)]
    assert not torch.allclose(small_params["attn.o_proj.bias"], params["attn.o_proj.bias"])  # v's bias
    _same_function(model, params, small, small_params, torch.randn(3, 7, 16))


def test_shrink_multihead_attention_heads_whose_output_columns_are_zero() -> None:
    torch.manual_seed(4)
    model = _MHA()
    x, pad = torch.randn(2, 5, 8), torch.zeros(2, 5, dtype=torch.bool)
    params = _params(model)
    params["attn.out_proj.weight"][:, 4:8] = 0.0  # head 1 writes nothing
    small, small_params = fr.prune.shrink(model, params, fr.prune.couplings(model, x, pad), x, pad)
    assert small.attn.num_heads == 3 and small_params["attn.in_proj_weight"].shape == (36, 16)
    assert small_params["attn.out_proj.weight"].shape == (16, 12)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    _same_function(model, params, small, small_params, torch.randn(2, 6, 8), pad)


def test_shrink_keeps_unzeroed_and_reports_a_reader_without_bias() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.Sigmoid(), nn.Linear(6, 2, bias=False))
    x = torch.randn(3, 4)
    params = _params(model)
    _zero(params, "0.weight", [0, 1])
    params["0.bias"][1] = -math.inf  # sigmoid(-inf) = 0: removable without a bias to fold into
    small, small_params = result = fr.prune.shrink(model, params, fr.prune.couplings(model, x), x)
    (c,) = result.report.couplings
    assert c.removed == (1,) and c.kept_zero[0][0] == 0 and "no bias" in c.kept_zero[0][1]
    assert c.live == 4 and small[0].out_features == 5
    _same_function(model, params, small, small_params, torch.randn(3, 4))


def test_shrink_removes_units_read_through_zero_columns() -> None:
    model, x = _mlp(), torch.randn(2, 6)
    params = _params(model)
    _zero(params, "2.weight", [2, 5], dim=1)  # hidden units 2 and 5 of layer 0 are never read
    small, small_params = fr.prune.shrink(model, params, fr.prune.couplings(model, x)[:1], x)
    assert small[0].out_features == 6 and small[2].in_features == 6
    _same_function(model, params, small, small_params, torch.randn(4, 6))


# ---------------------------------------------------------------------------- refusals
class _Cumsum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.cumsum(self.a(x), dim=-1))


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)

    def forward(self, x):
        return self.a(x) if x.sum() > 0 else x


def test_what_cannot_be_analysed_is_an_error_naming_the_node() -> None:
    with pytest.raises(ValueError, match=r"cannot analyse node 'cumsum'.*units of a"):
        fr.prune.couplings(_Cumsum(), torch.randn(2, 3))
    with pytest.raises(ValueError, match="torch.fx cannot trace _Branchy"):
        fr.prune.couplings(_Branchy(), torch.randn(2, 3))
    with pytest.raises(TypeError, match="example inputs"):
        fr.prune.couplings(_mlp())


def test_shrink_refuses_foreign_couplings_and_bad_params() -> None:
    model, x = _mlp(), torch.randn(2, 6)
    params = _params(model)
    with pytest.raises(ValueError, match="not a coupling of this model's dataflow"):
        fr.prune.shrink(model, params, [{"0.weight": 0}], x)  # without its bias
    with pytest.raises(ValueError, match="no leaf 'nope.weight'"):
        fr.prune.shrink(model, params, [{"nope.weight": 0}], x)
    with pytest.raises(ValueError, match="given twice"):
        fr.prune.shrink(model, params, [{"0.weight": 0, "0.bias": 0}] * 2, x)
    with pytest.raises(ValueError, match="leaf '0.weight' has shape"):
        fr.prune.shrink(model, {**params, "0.weight": torch.zeros(2, 2)}, [{"0.weight": 0}], x)
    with pytest.raises(ValueError, match="'zz' is neither"):
        fr.prune.shrink(model, {"zz": torch.zeros(1)}, [{"0.weight": 0}], x)


# --------------------------------------------------------------------- classic loops
def _block_soft_threshold_(params: dict, coupling: fr.Coupling, t: float) -> dict:
    """The coupled prox, written by hand on Coupling.norms, in place (donated)."""
    groups = coupling.validate(params)
    norms = coupling.norms(params)
    scale = torch.where(norms > 0, (1 - t * math.sqrt(coupling.group_size(params)) / norms).clamp(min=0), 0.0)
    for path, dim in coupling.dims.items():
        w = params[path]
        shape = [1] * w.ndim
        shape[dim] = w.shape[dim]
        w.mul_(scale.repeat_interleave(w.shape[dim] // groups).reshape(shape))
    return params


def test_after_step_applies_the_prox_on_the_modules_parameters_then_shrink() -> None:
    torch.manual_seed(5)
    x = torch.randn(64, 6)
    y = x[:, :3] - x[:, 3:]
    model = _mlp()
    reference = _params(model)
    cs = fr.prune.couplings(model, x)
    lr, lam = 0.1, 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def prox(params):
        for c in cs:
            _block_soft_threshold_(params, c, lam * opt.param_groups[0]["lr"])
        return params

    handle = fr.prune.after_step(opt, model, prox)
    for _ in range(60):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
        # the same step by hand, on a plain dict
        grads = torch.func.grad(lambda p: F.mse_loss(functional_call(model, p, (x,)), y))(reference)
        reference = prox({k: v - lr * grads[k] for k, v in reference.items()})
    handle.remove()
    params = _params(model)
    for k in params:
        torch.testing.assert_close(params[k], reference[k], atol=1e-6, rtol=1e-5)
    zero = [int((c.norms(params) == 0).sum()) for c in cs]
    assert 0 < sum(zero) < sum(c.validate(params) for c in cs), zero  # some units, not all
    small, small_params = fr.prune.shrink(model, params, cs, x)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    _same_function(model, params, small, small_params, torch.randn(5, 6))


def test_after_step_copies_a_pure_proxs_result_and_checks_shapes() -> None:
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    handle = fr.prune.after_step(opt, model, lambda p: {k: torch.zeros_like(v) for k, v in p.items()})
    opt.step()
    assert float(model.weight.detach().abs().sum()) == 0.0
    handle.remove()
    before = model.weight.detach().clone()
    fr.prune.after_step(opt, model, lambda p: {"weight": torch.ones(3), "bias": torch.ones(2)})
    with pytest.raises(ValueError, match="parameter 'weight'"):
        opt.step()
    assert torch.equal(model.weight.detach(), before)  # nothing written


def test_shrink_a_layer_to_no_units_leaves_its_constants_in_the_next_bias() -> None:
    model, x = _mlp(), torch.randn(2, 6)
    params = _params(model)
    params["2.weight"].zero_()  # every sigmoid unit outputs sigmoid(bias)
    small, small_params = fr.prune.shrink(model, params, fr.prune.couplings(model, x), x)
    assert small[2].out_features == 0 and small[4].in_features == 0
    assert small[0].out_features == 0  # then layer 0 is read by nothing but zero columns
    _same_function(model, params, small, small_params, torch.randn(4, 6))


class _SumPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.b(torch.sigmoid(self.a(x)).sum(1))  # summed over the sequence


def test_shrink_keeps_a_constant_whose_value_depends_on_the_input_size() -> None:
    model, x = _SumPool(), torch.randn(2, 5, 4)
    params = _params(model)
    _zero(params, "a.weight", [0, 1])
    params["a.bias"][1] = -math.inf  # sigmoid(-inf) = 0, summed: still 0
    small, small_params = result = fr.prune.shrink(model, params, fr.prune.couplings(model, x), x)
    (c,) = result.report.couplings
    assert c.removed == (1,) and c.kept_zero[0][0] == 0 and "input's size" in c.kept_zero[0][1]
    _same_function(model, params, small, small_params, torch.randn(3, 9, 4))  # another length


class _InferredHeads(nn.Module):
    """Heads sized by -1 (as recent Hugging Face models do): no head count to update."""

    def __init__(self, fixed: bool) -> None:
        super().__init__()
        self.fixed, self.head_dim = fixed, 4
        self.q, self.k, self.v, self.o = (nn.Linear(12, 12) for _ in range(4))

    def forward(self, x):
        b, t, _ = x.shape
        heads = 3 if self.fixed else -1  # fixed: a count held by no attribute fr.prune knows
        q, k, v = (p(x).view(b, t, heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v)
        return self.o(a.transpose(1, 2).reshape(b, t, -1))


@pytest.mark.parametrize("fixed", [False, True])
def test_shrink_heads_without_a_head_count_attribute(fixed: bool) -> None:
    model, x = _InferredHeads(fixed), torch.randn(2, 5, 12)
    params = _params(model)
    for n in "qkv":
        params[f"{n}.weight"][4:8] = 0.0
    small, small_params = result = fr.prune.shrink(model, params, fr.prune.couplings(model, x), x)
    (c,) = result.report.couplings
    if fixed:
        assert c.removed == () and "holds no head count" in c.kept_zero[0][1]
    else:
        assert c.removed == (1,) and small.q.out_features == 8
    _same_function(model, params, small, small_params, torch.randn(3, 4, 12))


# ------------------------------- shrink's signature (docs/pruning.md), the coupled prox
def test_shrink_with_the_design_signature_uses_the_couplings_example_inputs() -> None:
    torch.manual_seed(6)
    model, x = _cnn(), torch.randn(3, 1, 8, 8)
    _randomize_bn(model)
    cs = fr.prune.couplings(model, x)
    assert cs == [fr.Coupling(dict(c.dims), groups=c.groups) for c in cs]  # plain couplings to the eye
    x.mul_(float("nan"))  # what they remember is a copy
    params = _params(model)
    _zero(params, "0.weight", [2])
    params["1.bias"][2] = 3.0  # a folded constant: needs the remembered inputs' run
    small, small_params = result = fr.prune.shrink(model, params, cs)
    assert small[0].out_channels == 3 and len(result.report.couplings[0].removed) == 1
    _same_function(model, params, small, small_params, torch.randn(5, 1, 8, 8))
    # a list that mixes hand-written couplings in still finds them
    by_hand = [{"3.weight": 0, "3.bias": 0, "4.weight": 0, "4.bias": 0}, cs[0]]
    assert fr.prune.shrink(model, params, by_hand).model[0].out_channels == 3


def test_shrink_without_example_inputs_anywhere_is_an_error() -> None:
    model = _mlp()
    params = _params(model)
    with pytest.raises(TypeError, match=r"needs example inputs .*fr.prune.couplings\(model, x\)"):
        fr.prune.shrink(model, params, [{"0.weight": 0, "0.bias": 0}])


def test_after_step_with_the_coupled_group_lasso_prox_donated_then_shrink() -> None:
    """The classic loop of docs/pruning.md: torch.optim.SGD, then after every step
    fr.group_lasso.prox(..., groups=couplings, donate=True) on the module's own parameters;
    against the same loop with a block soft threshold written by hand on Coupling.norms."""
    torch.manual_seed(5)
    x = torch.randn(64, 6)
    y = x[:, :3] - x[:, 3:]
    model = _mlp()
    cs = fr.prune.couplings(model, x)
    lam = 0.05
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    ref_opt_model = _mlp()
    ref_opt_model.load_state_dict(model.state_dict())
    ref_opt = torch.optim.SGD(ref_opt_model.parameters(), lr=0.1, momentum=0.5)
    storage = {k: p.data_ptr() for k, p in model.named_parameters()}

    def prox(params):
        return fr.group_lasso.prox(params, lam, opt.param_groups[0]["lr"], groups=cs, donate=True)

    handle = fr.prune.after_step(opt, model, prox)
    for _ in range(40):
        for m, o in ((model, opt), (ref_opt_model, ref_opt)):
            o.zero_grad()
            F.mse_loss(m(x), y).backward()
            o.step()
        with torch.no_grad():
            live = {k: p.detach() for k, p in ref_opt_model.named_parameters()}
            for c in cs:
                _block_soft_threshold_(live, c, lam * 0.1)
    handle.remove()
    assert {k: p.data_ptr() for k, p in model.named_parameters()} == storage  # written in place
    params, reference = _params(model), _params(ref_opt_model)
    for k in params:
        torch.testing.assert_close(params[k], reference[k], atol=1e-6, rtol=1e-5)
    zero = [int((c.norms(params) == 0).sum()) for c in cs]
    assert 0 < sum(zero) < sum(c.validate(params) for c in cs), zero
    small, small_params = fr.prune.shrink(model, params, cs)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    _same_function(model, params, small, small_params, torch.randn(5, 6))

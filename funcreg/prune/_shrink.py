"""A smaller copy of a module: the zero groups of its couplings cut out of every layer that
holds or reads them, their constant outputs folded into the readers' biases."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import optree
import torch
import torch.fx as fx
from torch import nn

from funcreg.coupling import Coupling
from funcreg.prune._attention import PrunedMultiheadAttention
from funcreg.prune._dataflow import Dataflow, Reader, Space
from funcreg.prune._report import CouplingShrink, ShrinkReport, Shrunk

# attributes a Hugging Face style attention module reads its head count from
_HEAD_COUNTS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
_HEAD_WIDTHS = ("all_head_size", "inner_dim")


@dataclass
class _Plan:
    """What to do to one space: the groups to remove, the zero ones kept (and why), and the
    constants to add to readers' biases (path -> delta, on the full-size tensors)."""

    space: Space
    coupling: Coupling
    removed: list[int] = field(default_factory=list)
    kept_zero: list[tuple[int, str]] = field(default_factory=list)
    folds: dict[str, torch.Tensor] = field(default_factory=dict)
    head_owner: str | None = None


def shrink(
    model: nn.Module, params: Mapping[str, torch.Tensor], couplings: Any, *example_inputs: Any
) -> Shrunk:
    """See :func:`funcreg.prune.shrink` (the public docstring lives there)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, not {type(model).__name__}")
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict {{path: tensor}}, not {type(params).__name__}")
    wanted = Coupling.normalize(couplings)
    work = copy.deepcopy(model)
    modes = {name: m.training for name, m in model.named_modules()}
    originals = {**dict(work.named_parameters()), **dict(work.named_buffers())}
    for path, t in params.items():
        if path not in originals:
            raise ValueError(f"params leaf {path!r} is neither a parameter nor a buffer of the model")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"params leaf {path!r} is a {type(t).__name__}, not a tensor")
        if t.shape != originals[path].shape:
            raise ValueError(f"params leaf {path!r} has shape {tuple(t.shape)} but the model's "
                             f"has shape {tuple(originals[path].shape)}")
    for path, t in params.items():
        _assign(work, path, t.detach().clone())
    work.eval()
    params_before = sum(p.numel() for p in work.parameters())
    flow = Dataflow(work, example_inputs)
    state = {**dict(work.named_parameters()), **dict(work.named_buffers())}
    plans = _match(flow.spaces, wanted, state)
    readers = {r.node for plan in plans for r in plan.space.readers if r.node is not None}
    with torch.no_grad():
        reference, values = _run(flow.graph_module, readers, example_inputs)
        for plan in plans:
            _decide(plan, state, values, flow.modules)
        _build(work, plans, state)
        try:
            result = work(*example_inputs)
        except Exception as e:
            raise RuntimeError(
                f"fr.prune.shrink: the smaller model's forward fails on the example inputs "
                f"({type(e).__name__}: {e}); the model computes a width from something shrink "
                "did not update (an attention module's hidden size, say)"
            ) from e
    _check(reference, result)
    for name, m in work.named_modules():
        m.train(modes.get(name, m.training))
    new_state = {**dict(work.named_parameters()), **dict(work.named_buffers())}
    smaller = {path: new_state[path].detach().clone() for path in params}
    report = ShrinkReport(
        tuple(CouplingShrink(p.space.label, p.coupling, p.space.num_groups, tuple(p.removed),
                             tuple(p.kept_zero)) for p in plans),
        params_before, sum(p.numel() for p in work.parameters()),
    )
    return Shrunk(work, smaller, report)


def _match(spaces: Sequence[Space], wanted: Sequence[Coupling], state: dict[str, torch.Tensor]) -> list[_Plan]:
    """The dataflow's space for each coupling asked for, in the order asked."""
    found = {}
    for space in spaces:
        c = space.coupling()
        found[(frozenset(c.dims.items()), c.groups)] = (space, c)
    plans, seen = [], set()
    for i, c in enumerate(wanted):
        key = (frozenset(c.dims.items()), c.validate(state))
        if key not in found:
            known = "; ".join(repr(s.coupling()) for s in spaces) or "none"
            raise ValueError(
                f"couplings[{i}] {c!r} is not a coupling of this model's dataflow; shrink "
                f"removes the groups of those fr.prune.couplings finds: {known}"
            )
        if key in seen:
            raise ValueError(f"couplings[{i}] {c!r} is given twice")
        seen.add(key)
        space, coupling = found[key]
        plans.append(_Plan(space, coupling))
    return plans


class _Capture(fx.Interpreter):
    """Runs the traced model and keeps the values of some nodes."""

    def __init__(self, gm: fx.GraphModule, keep: set[fx.Node]) -> None:
        super().__init__(gm)
        self.keep = keep
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n in self.keep:
            self.values[n] = out
        return out


def _run(gm: fx.GraphModule, keep: set[fx.Node], inputs: tuple[Any, ...]) -> tuple[Any, dict[fx.Node, Any]]:
    capture = _Capture(gm, keep)
    out = capture.run(*inputs)
    return out, capture.values


def _groups_of(t: torch.Tensor, dim: int, groups: int) -> torch.Tensor:
    """``t`` as ``(groups, -1)``: row k holds group k's chunk along ``dim``."""
    return t.movedim(dim, 0).reshape(groups, -1)


def _tolerance(dtype: torch.dtype) -> float:
    return 1e3 * torch.finfo(dtype).eps


def _decide(plan: _Plan, state: dict[str, torch.Tensor], values: dict[fx.Node, Any],
            modules: dict[str, nn.Module]) -> None:
    """Which zero groups go, and the constants their removal folds into the readers."""
    space, groups = plan.space, plan.space.num_groups
    incoming = torch.zeros(groups, dtype=torch.bool)
    if space.producers:
        incoming = torch.stack([(_groups_of(state[p.weight], 0, groups) == 0).all(1).cpu()
                                for p in space.producers]).all(0)
    unread = torch.stack([(_groups_of(state[r.weight], 1, groups) == 0).all(1).cpu()
                          for r in space.readers]).all(0)
    if space.heads and space.mha is None:
        plan.head_owner = _head_owner(space, modules)  # None: no count attribute to update
    headless = None
    if space.fixed_heads and plan.head_owner is None:
        owner = _common_prefix([p.module for p in space.producers] + [r.module for r in space.readers])
        headless = (f"{owner or 'the model'} holds no head count fr.prune updates "
                    f"({', '.join(_HEAD_COUNTS)})")
    for k in range(groups):
        if not (unread[k] or incoming[k]):
            continue
        why = headless
        folds: list[tuple[str, torch.Tensor]] = []
        if why is None and not unread[k]:
            for r in space.readers:
                why = _fold(r, k, groups, state, values[cast(fx.Node, r.node)], folds)
                if why:
                    break
            if why is None and folds and space.sized is not None:
                why = (f"its constant output passes {space.sized!r}, a sum or softmax whose "
                       "value depends on the input's size")
        if why:
            plan.kept_zero.append((k, why))
            continue
        plan.removed.append(k)
        for path, delta in folds:
            plan.folds[path] = plan.folds[path] + delta if path in plan.folds else delta


def _fold(r: Reader, k: int, groups: int, state: dict[str, torch.Tensor], value: torch.Tensor,
          folds: list[tuple[str, torch.Tensor]]) -> str | None:
    """Append to ``folds`` the bias change that removing group ``k`` from what ``r`` reads
    needs; return why it cannot be done exactly, or ``None``."""
    columns = value.movedim(r.axis, -1).reshape(-1, value.shape[r.axis])
    width = columns.shape[1] // groups
    block = columns[:, k * width:(k + 1) * width]
    first = block[:1]
    tol = _tolerance(block.dtype)
    if not torch.allclose(block, first.expand_as(block), rtol=tol, atol=tol * float(block.abs().max())):
        return (f"its value where {r.module} reads it is not the same at every position "
                "(a zero-padded pooling before it, say)")
    constant = block.mean(0)
    if not bool((constant != 0).any()):
        return None
    if r.bias is None:
        return f"its constant output is read by {r.module}, which has no bias to fold it into"
    if r.zero_padding:
        return (f"its constant output is read by {r.module}, which pads with zeros: its border "
                "would see 0 instead of the constant")
    w = state[r.weight]
    cols = w.narrow(1, k * width, width)
    if r.kind == "linear":
        delta = cols @ constant.to(w.dtype)
    else:
        shape = (1, width) + (1,) * (w.ndim - 2)
        delta = (cols * constant.to(w.dtype).reshape(shape)).sum(dim=tuple(range(1, w.ndim)))
    folds.append((r.bias, delta))
    return None


def _common_prefix(names: list[str]) -> str:
    parts = [n.split(".") for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _head_owner(space: Space, modules: dict[str, nn.Module]) -> str | None:
    """The module whose head count the attention reads, if it has one fr.prune knows."""
    owner = _common_prefix([p.module for p in space.producers] + [r.module for r in space.readers])
    module = modules.get(owner)
    if module is None or not any(getattr(module, a, None) == space.num_groups for a in _HEAD_COUNTS):
        return None
    return owner


def _keep_index(size: int, groups: int, keep: list[int], device: torch.device) -> torch.Tensor:
    width = size // groups
    index = [torch.arange(k * width, (k + 1) * width, device=device) for k in keep]
    return torch.cat(index) if index else torch.empty(0, dtype=torch.long, device=device)


def _build(work: nn.Module, plans: list[_Plan], state: dict[str, torch.Tensor]) -> None:
    """Fold the constants, cut the removed groups out of every leaf, update the modules."""
    new = dict(state)
    for plan in plans:
        for path, delta in plan.folds.items():
            new[path] = new[path] + delta
    cuts: dict[str, list[tuple[int, torch.Tensor]]] = {}
    replaced = {}
    for plan in plans:
        space, groups = plan.space, plan.space.num_groups
        if not plan.removed:
            continue
        keep = [k for k in range(groups) if k not in set(plan.removed)]

        def cut(path: str | None, dim: int) -> None:
            if path is not None:
                t = state[path]
                cuts.setdefault(path, []).append((dim, _keep_index(t.shape[dim], groups, keep, t.device)))

        for p in space.producers:
            cut(p.weight, 0)
            cut(p.bias, 0)
        for n in space.norms:
            for stat in (n.weight, n.bias, n.running_mean, n.running_var):
                cut(stat, 0)
        for r in space.readers:
            cut(r.weight, 1)
        if space.mha is not None:
            mha = work.get_submodule(space.mha)
            assert isinstance(mha, nn.MultiheadAttention), f"{space.mha} is a {type(mha).__name__}"
            head = _keep_index(mha.embed_dim, groups, keep, mha.in_proj_weight.device)
            rows = torch.cat([head + block * mha.embed_dim for block in range(3)])
            cuts.setdefault(f"{space.mha}.in_proj_weight", []).append((0, rows))
            if mha.in_proj_bias is not None:
                cuts.setdefault(f"{space.mha}.in_proj_bias", []).append((0, rows))
            replaced[space.mha] = PrunedMultiheadAttention(mha, len(keep))
        if plan.head_owner is not None:
            owner = work.get_submodule(plan.head_owner)
            for attr in _HEAD_COUNTS:
                if getattr(owner, attr, None) == groups:
                    setattr(owner, attr, len(keep))
            for attr in _HEAD_WIDTHS:
                if getattr(owner, attr, None) == space.size:
                    setattr(owner, attr, space.size // groups * len(keep))
    for name, module in replaced.items():
        parent, _, child = name.rpartition(".")
        setattr(work.get_submodule(parent) if parent else work, child, module)
    rebuilt = {p for p in state if any(p.startswith(name + ".") for name in replaced)}
    for path in set(cuts) | {p for plan in plans for p in plan.folds} | rebuilt:
        t = new[path]
        for dim, index in cuts.get(path, []):
            t = t.index_select(dim, index)
        _assign(work, path, t, requires_grad=state[path].requires_grad if path in state else False)
    for m in work.modules():
        if isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            m.out_channels, m.in_channels = m.weight.shape[0], m.weight.shape[1] * m.groups
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.num_features = m.running_mean.shape[0]


def _assign(root: nn.Module, path: str, t: torch.Tensor, requires_grad: bool | None = None) -> None:
    """Put ``t`` at ``path`` (a parameter or a buffer) in ``root``, as the same kind."""
    owner_name, _, attr = path.rpartition(".")
    owner = root.get_submodule(owner_name) if owner_name else root
    if attr in owner._parameters:
        old = owner._parameters[attr]
        grad = old.requires_grad if requires_grad is None and old is not None else bool(requires_grad)
        owner._parameters[attr] = nn.Parameter(t, requires_grad=grad)
    else:
        owner._buffers[attr] = t


def _check(reference: Any, result: Any) -> None:
    """The smaller model must compute what the original did on the example inputs."""
    ref_leaves, ref_spec = optree.tree_flatten(reference, namespace="torch")
    new_leaves, new_spec = optree.tree_flatten(result, namespace="torch")
    if ref_spec != new_spec:
        raise RuntimeError("fr.prune.shrink: the smaller model returns another structure than the original")
    for a, b in zip(ref_leaves, new_leaves):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            if not isinstance(b, torch.Tensor) or a.shape != b.shape:
                raise RuntimeError("fr.prune.shrink: the smaller model returns another shape than the original")
            tol = _tolerance(a.dtype) * (1 + float(a.abs().max()) if a.numel() else 1)
            err = float((a - b).abs().max()) if a.numel() else 0.0
            if not err <= tol:
                raise RuntimeError(
                    f"fr.prune.shrink: the smaller model differs from the original on the example "
                    f"inputs (max |Δ| {err:.3g}); fr.prune misread an op of this model, please report it"
                )

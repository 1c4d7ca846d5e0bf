"""The engine: every public operation is an :class:`Op` that :func:`run` executes.

An op describes its inputs by role and name (docs/design.md): the main tree, further trees
matched to it by leaf path (:class:`Role`), which of them it writes (and may donate), its
hyperparameters by keyword (:class:`funcreg._hyper.Param`), what ``where`` means to it, and
a body with a keyword signature, ``body(ops, *, params, grads, ..., lr, beta1, ...)``
returning the new leaves of each written role. :func:`run` alone flattens, selects,
validates, checks donation, groups, dispatches (:mod:`funcreg._dispatch`) and writes back.
What depends only on the trees' structure, their leaves' metadata, ``where``, the
hyperparameters' kinds and the flags is a :class:`Plan`, cached (never keyed on values).

Extension points: ``prepass(ops, *, paths, **leaves_and_hypers) -> {name: per-leaf list}``
runs once on *all* active leaves before the body, never cut into groups, blocks or chunks
(coupled groups' norms over slices of several leaves, which ``paths`` names; a DTensor's
global norm; a batched SVD); ``LeafError(k, msg)`` raised by a body is reported naming the
k-th leaf it was given.
"""

from __future__ import annotations

import collections
import functools
import operator
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from funcreg import _dispatch, _donation, _hyper, _ops, _sharding, _stacked, _tree
from funcreg._selection import Where, selection

_functorch = torch._C._functorch
_VERSION = operator.attrgetter("_version")
_RG = operator.attrgetter("requires_grad")


class Role(NamedTuple):
    """A tree an op takes: ``name`` is the body's keyword for its leaves, ``label`` how
    errors name it; ``check(op_name, label, path, leaf, value)`` how a leaf must fit the
    main tree's (default: a tensor of its shape, dtype and device); ``none``: a ``None``
    leaf makes that leaf inactive (a missing gradient)."""

    name: str
    label: str
    check: Callable[[str, str, str, torch.Tensor, Any], None] | None = None
    none: bool = False


@dataclass(eq=False)
class Op:
    """An operation's description. ``output``: "trees" (the new written trees, by role),
    "tree" (a fresh tree, zeros on inactive leaves), "sum" or "max" (of per-leaf values);
    ``where``: "select" (only selected leaves are active), "decay" (all are; the body gets
    ``decay=`` the selection, torch.optim's two parameter groups) or "none"; ``history``:
    refuse inputs that record autograd history unless ``differentiable=True``;
    ``elementwise``: a donated CPU call may run in cache-sized blocks; ``pieces``: a donated
    call is cut at all (not for a body of one kernel per leaf); ``check(flat, selected,
    **static)``: options against leaves, once per plan; ``validate(per_leaf_values)``: the
    hyperparameters' values, every call."""

    name: str
    body: Callable[..., Any]
    main: Role
    roles: tuple[Role, ...] = ()
    writes: tuple[str, ...] = ()
    hypers: tuple[_hyper.Param, ...] = ()
    output: str = "trees"
    where: str = "select"
    elementwise: bool = False
    prepass: Callable[..., dict[str, list[Any]]] | None = None
    history: bool = True
    pieces: bool = True
    check: Callable[..., None] | None = None
    validate: Callable[[dict[str, list[Any]]], None] | None = None
    recent: list[Any] = field(default_factory=list)  # the plans of the last calls, latest first


class LeafError(Exception):
    """Raised by a body about the ``k``-th leaf it was given; reported naming the leaf
    (in place of ``{leaf}`` in the message, or before it)."""

    def __init__(self, k: int, message: str):
        super().__init__(message)
        self.k = k


#: plans kept across calls (least recently used dropped first)
CACHE_SIZE = 64
#: plans an op recognizes by their tensors, without a lookup (two optimizers in one loop,
#: a pure and a donated call)
RECENT = 4
_PLANS: collections.OrderedDict[Any, Plan] = collections.OrderedDict()


def run(op: Op, trees: Sequence[Any], hypers: dict[str, Any], *, where: Where = None,
        donate: bool = False, differentiable: bool = False, split: bool = True,
        static: tuple[tuple[str, Any], ...] = ()) -> Any:
    """Run ``op`` on ``trees`` (the main tree, then one per :attr:`Op.roles`), with
    ``hypers`` by :class:`funcreg._hyper.Param` name and ``static`` keyword arguments for
    the body (hashable: they key the plan). ``split``: with ``where="decay"``, run the
    selected leaves apart from the others. Returns per :attr:`Op.output`."""
    kinds = tuple(_hyper.kind(p, hypers[p.name]) for p in op.hypers)
    compiling = torch.compiler.is_compiling()
    top = None if compiling else _functorch.peek_interpreter_stack()
    levels = None if top is None else _stacked.levels(top)
    # under vmap alone the engine works on the tensors under the wrappers (the stacked path)
    sig = (static, kinds, donate, split, "vmap" if levels else compiling or top is not None,
           _dispatch.CHUNK, _dispatch.BLOCK_BYTES)
    quick = [_tree.structure(t) for t in trees]
    peeled = [_stacked.peel(q[1], levels) for q in quick] if levels else None
    where = _Where(where)
    plan, changed = (None, None) if compiling else _recall(op, sig, trees, quick, peeled, where)
    if plan is None:
        plan = _plan(op, sig, trees, kinds, where, hypers, peeled)
        if not compiling:
            _remember(op, plan, quick, peeled)
    under = peeled and (levels, plan.align([b for b, _ in peeled]), plan.align([d for _, d in peeled]))
    return _execute(plan, plan.align([q[1] for q in quick]), hypers, differentiable, changed, under)


# ---------------------------------------------------------------------- recognition
def _meta(x: Any) -> Any:
    """What a plan depends on about a leaf (never its values)."""
    if not isinstance(x, torch.Tensor):
        return type(x)
    # the type under torch.func's wrappers tells a DTensor
    kind = type(_sharding.unwrap(x)) if _functorch.is_functorch_wrapped_tensor(x) else type(x)
    strided = x.layout == torch.strided
    return (kind, x.shape, x.dtype, x.device, x.layout, strided and x.is_contiguous())


def _metas(leaves: list[Any], peeled: Any) -> list[Any]:
    """The leaves' metadata; under ``vmap`` (``peeled``: the tensors under the wrappers
    and their batch dims), that of the tensors under them, with their batch dims."""
    return [_meta(x) for x in leaves] if peeled is None else list(zip(map(_meta, peeled[0]), peeled[1]))


def _none() -> None:
    return None


class _Record:
    """The tensors a plan last ran on (weakly held), their version counters and addresses:
    the same tensors, unmoved, need no second look (a version counter moves with every
    in-place op, ``resize_`` or ``t_`` included; an address with new storage assigned to
    ``.data``). Under ``vmap``: the tensors under the wrappers made for the call, and
    ``dims``, their batch dims."""

    __slots__ = ("refs", "versions", "ptrs", "dims")

    def __init__(self, leaves: list[Any], dims: Any = None):
        self.refs, self.dims = [_none if x is None else weakref.ref(x) for x in leaves], dims
        self.versions = self.ptrs = None  # an inference tensor has no version: never recognized
        try:
            self.versions, self.ptrs = _versions(leaves), _ptrs(leaves)
        except RuntimeError:
            pass

    def holds(self, leaves: list[Any], dims: Any = None) -> bool:
        try:
            return (dims == self.dims and all(map(operator.is_, [r() for r in self.refs], leaves))
                    and _versions(leaves) == self.versions and _ptrs(leaves) == self.ptrs)
        except RuntimeError:
            return False

    def written(self) -> None:
        """After the call wrote into the tensors it holds: their new version counters."""
        try:
            self.versions = _versions([r() for r in self.refs])
        except RuntimeError:  # inference tensors, donated under torch.inference_mode()
            self.versions = None


def _versions(xs: list[Any]) -> list[int | None]:
    try:
        return list(map(_VERSION, xs))
    except AttributeError:  # a None leaf (a missing gradient)
        return [None if x is None else x._version for x in xs]


def _ptrs(xs: list[Any]) -> list[int | None]:
    try:
        return [x.data_ptr() for x in xs]
    except (AttributeError, RuntimeError):  # a None leaf, a DTensor (its local shard's)
        return [None if x is None else _donation._local(x).data_ptr() for x in xs]


class _Where:
    """A call's ``where``, and the selection it made, once made (a user's callable is
    called once per call, however often the selection is read)."""

    def __init__(self, where: Where):
        self.where = where
        self.mask: list[bool] | None = None

    def key(self, op: Op, flat: Callable[[], _tree.Flat]) -> Any:
        """What a plan depends on about ``where``: funcreg's selectors are pure functions of
        (path, metadata), a tree of bools is its values, a user's callable its answer now."""
        w = self.where
        if w is None or op.where == "none":
            return None
        key = getattr(w, "_key", None)
        if key is not None:
            return ("selector", key)
        if callable(w):
            return ("mask", tuple(self.select(op, flat())))
        fp, leaves = _tree.structure(w)
        return ("tree", fp, tuple(leaves), tuple(map(type, leaves)))

    def select(self, op: Op, flat: _tree.Flat) -> list[bool]:
        if op.where == "none" or (op.where == "decay" and self.where is None):
            return [True] * len(flat.leaves)
        if self.mask is None:
            self.mask = selection(flat, self.where)
        return self.mask


def _recall(op: Op, sig: Any, trees: Sequence[Any], quick: list[tuple[Any, list[Any]]], peeled: Any,
            where: _Where) -> tuple[Plan | None, list[int] | None]:
    """The plan this call can reuse, and the trees whose leaves it had not seen as they are
    (``None``: none of them)."""
    own = peeled or [(leaves, None) for _, leaves in quick]
    for plan in op.recent:
        if (plan.sig != sig or len(plan.fps) != len(quick)
                or not all(fp is q[0] or fp == q[0] for fp, q in zip(plan.fps, quick))
                or where.key(op, lambda: _tree.Flat(plan.paths, quick[0][1], plan.spec)) != plan.wkey):
            continue
        records = plan.records
        changed = [k for k in range(len(quick)) if records is None or not records[k].holds(*own[k])]
        if any(_metas(quick[k][1], peeled and peeled[k]) != plan.metas[k] for k in changed):
            continue
        for k in changed if records is not None else ():
            records[k] = _Record(*own[k])
        op.recent = [plan, *(p for p in op.recent if p is not plan)]
        return plan, changed
    fps = tuple(q[0] for q in quick)
    try:
        wkey = where.key(op, lambda: _tree.Flat(_tree.paths_of(trees[0], fps[0], op.main.label), quick[0][1], fps[0]))
        plan = _PLANS.get((op, sig, wkey, fps, tuple(tuple(_metas(q[1], peeled and peeled[k]))
                                                     for k, q in enumerate(quick))))
    except Exception:  # unhashable, or a where that fails: building the plan says why
        return None, None
    if plan is not None:
        _PLANS.move_to_end(plan.key)
        _remember(op, plan, quick, peeled)
    return plan, None


def _remember(op: Op, plan: Plan, quick: list[tuple[Any, list[Any]]], peeled: Any) -> None:
    if plan.key is not None:
        op.recent = [plan, *(p for p in op.recent if p is not plan)][:RECENT]
        # under a transform other than vmap the leaves are wrappers made for the call: none to hold
        plan.records = None if plan.sig[4] is True else [_Record(*own) for own in peeled or
                                                         [(leaves, None) for _, leaves in quick]]
        plan.donation = None


# ------------------------------------------------------------------------------ plans
class Plan:
    """What a call needs that depends only on its signature ``sig``: the main tree's
    paths and spec, the role trees' order (``perms``), the selection, the active leaves
    split into ``parts`` (decayed or not) with their fast-path groups, where each leaf's
    value sits in a per-leaf hyperparameter tree (``hyper_at``), and what the last calls
    saw and checked (``records``, ``donation``); never a tensor of the call that built it."""

    def __init__(self, op: Op, sig: Any, flat: _tree.Flat, perms: list[list[int] | None],
                 active: list[int], parts: list[tuple[dict[str, Any], list[int], list[_dispatch.Group]]],
                 hyper_at: dict[str, dict[int, int]]):
        self.op, self.sig, self.perms, self.active, self.parts, self.hyper_at = op, sig, perms, active, parts, hyper_at
        self.paths, self.spec = flat.paths, flat.spec
        self.names = [op.main.name, *(r.name for r in op.roles)]
        self.labels = [op.main.label, *(r.label for r in op.roles)]
        self.written = [self.names.index(n) for n in op.writes]
        self.sharded = _sharding.any_dtensor(flat.leaves)
        self.stackable = op.output in ("trees", "tree") and not self.sharded  # DTensors: per leaf
        # one part of every leaf, in order: the trees' own lists serve as the body's columns
        self.whole = len(parts) == 1 and parts[0][1] == list(range(len(flat.leaves)))
        self.key: tuple[Any, ...] | None = None
        self.wkey: Any = None
        self.records: list[Any] | None = None
        #: whether a donated call may write, and the spans it writes (set on the first donation)
        self.donation: tuple[bool, _donation.Spans | None] | None = None
        self.fps: list[Any] = []
        self.metas: list[list[Any]] = []

    def align(self, trees: list[list[Any]]) -> list[list[Any]]:
        """Each tree's leaves in the main tree's order."""
        return [leaves if perm is None else [leaves[j] for j in perm] for leaves, perm in zip(trees, self.perms)]


def _plan(op: Op, sig: Any, trees: Sequence[Any], kinds: tuple[Any, ...], where: _Where,
          hypers: dict[str, Any], peeled: Any) -> Plan:
    """Flatten, select and validate; group for the fast path (see :class:`Plan`)."""
    static, _, donate, split = sig[:4]
    spec, leaves = _tree.structure(trees[0])
    flat = _tree.Flat(_tree.paths_of(trees[0], spec, op.main.label), leaves, spec)
    for path, x in zip(flat.paths, leaves):
        _tree.check_leaf(op.main.label, path, x)
        if op.where == "decay" and not x.is_floating_point():
            raise TypeError(f"{op.name}: {op.main.label} leaf {path!r} has dtype {x.dtype}; only "
                            "floating-point parameters can be optimized")
    mask = where.select(op, flat)
    checked = [i for i, m in enumerate(mask) if m] if op.where == "select" else list(range(len(leaves)))
    passed = [i for i, m in enumerate(mask) if not m] if op.where == "select" else []
    if op.check is not None:
        op.check(flat, checked, **dict(static))
    columns = [leaves]
    perms: list[list[int] | None] = [None]
    for role, tree in zip(op.roles, trees[1:]):
        hint = (f". A leaf without a value is given as None ({role.label}[path] = None), "
                "which leaves that leaf as it is") if role.none else ""
        values = _tree.leaves_like(flat, tree, role.label, hint)
        for i in checked:
            if values[i] is not None or not role.none:
                (role.check or _tree.check_pair)(op.name, role.label, flat.paths[i], leaves[i], values[i])
        for i in passed:  # not read, but held (weakly) to recognize the next call: a tensor or None
            if not (values[i] is None or isinstance(values[i], torch.Tensor)):
                _tree.check_leaf(role.label, flat.paths[i], values[i])
        columns.append(values)
        perms.append(_perm(tree, flat, role.label))
    nones = [c for r, c in zip(op.roles, columns[1:]) if r.none]
    active = [i for i in checked if all(c[i] is not None for c in nones)]
    hyper_at = {p.name: dict(zip(active, _hyper.check_tree(p, k, flat, active)))
                for p, k in zip(op.hypers, kinds) if isinstance(k, tuple) and k[0] == "tree"}
    beside = [c for r, c in zip(op.roles, columns[1:]) if r.check is None]  # what a block cuts alike
    beside += [[values[at[i]] if i in at else None for i in range(len(leaves))]
               for name, at in hyper_at.items() for values in [_tree.structure(hypers[name])[1]]]
    parts = []
    for extra, idx in ([({"decay": d}, [i for i in active if mask[i] == d]) for d in (True, False)]
                       if op.where == "decay" and split
                       else [({"decay": False} if op.where == "decay" else {}, active)]):
        if idx:
            groups = _dispatch.groups([leaves[i] for i in idx], [[c[i] for i in idx] for c in beside],
                                      donate=donate and op.pieces, elementwise=op.elementwise and op.prepass is None)
            parts.append((extra, idx, groups))
    plan = Plan(op, sig, flat, perms, active, parts, hyper_at)
    if torch.compiler.is_compiling():  # traced once per graph: nothing to recognize it by
        return plan
    plan.fps = [spec, *(_tree.structure(t)[0] for t in trees[1:])]
    plan.metas = [_metas(_tree.structure(t)[1], peeled and peeled[k]) for k, t in enumerate(trees)]
    plan.wkey = where.key(op, lambda: flat)
    key = (op, sig, plan.wkey, tuple(plan.fps), tuple(tuple(m) for m in plan.metas))
    try:
        _PLANS[key] = plan
    except TypeError:  # an unhashable structure: this plan serves this call only
        return plan
    plan.key = key
    if len(_PLANS) > CACHE_SIZE:
        _PLANS.popitem(last=False)
    return plan


def _perm(tree: Any, flat: _tree.Flat, label: str) -> list[int] | None:
    """Where each leaf of the main tree's order sits among ``tree``'s own leaves (matched by
    path); ``None`` when in the same order."""
    spec, _ = _tree.structure(tree)
    if spec == flat.spec:
        return None
    at = {path: j for j, path in enumerate(_tree.paths_of(tree, spec, label))}
    perm = [at[path] for path in flat.paths]
    return None if perm == list(range(len(perm))) and len(at) == len(perm) else perm


# -------------------------------------------------------------------------- execution
def _execute(plan: Plan, trees: list[list[Any]], hypers: dict[str, Any], differentiable: bool,
             changed: list[int] | None, under: Any) -> Any:
    """The call on ``trees`` (each in the main tree's order; under ``vmap``, ``under``: the
    levels, and the tensors under the leaves and their batch dims, in that order)."""
    op, active, names = plan.op, plan.active, plan.names
    static, kinds, donate, _, transformed = plan.sig[:5]
    values = {p.name: hypers[p.name] for p in op.hypers}
    traced = differentiable
    if torch.is_grad_enabled() and not transformed:
        rows = trees if plan.whole else [[t[i] for i in active] for t in trees]
        if (any(any(map(_RG, row)) for row in rows)  # active leaves are never None
                or any(_RG(v) for v in values.values() if isinstance(v, torch.Tensor))):
            if op.history and not differentiable:
                _refuse_history(plan, rows)
            traced = True
    route = _dispatch.route(transformed=transformed, traced=traced, stackable=plan.stackable and under is not None)
    writes = op.writes or (op.main.name,)
    in_place = donate and bool(op.writes) and _donate(plan, under[1] if under else trees, under and under[2],
                                                      values, changed, traced)
    try:
        if op.validate is not None:
            per_leaf = _hyper_columns(plan, active, values, kinds, [trees[0][i] for i in active])
            op.validate({n: _ops.each(v, len(active)) for n, v in per_leaf.items()})
    except LeafError as e:
        raise _named(plan, active[e.k], e) from None
    out = {n: list(trees[names.index(n)]) for n in writes}
    for extra, idx, groups in plan.parts:
        columns = {n: t if plan.whole else [t[i] for i in idx] for n, t in zip(names, trees)}
        try:
            result = _run_part(plan, route, idx, groups, columns, values, kinds, {**dict(static), **extra},
                               in_place, writes, under)
        except LeafError as e:
            raise _named(plan, idx[e.k], e) from None
        for n in writes:
            new = _donation.commit(columns[n], result[n]) if in_place and n in op.writes else result[n]
            if plan.whole:
                out[n] = list(new)
            else:
                for i, v in zip(idx, new):
                    out[n][i] = v
    records = plan.records
    if in_place and records is not None:
        for k in plan.written:
            records[k].written()
    return _output(plan, out, trees)


def _named(plan: Plan, i: int, e: LeafError) -> ValueError:
    leaf, message = f"{plan.labels[0]} leaf {plan.paths[i]!r}", str(e)
    return ValueError(f"{plan.op.name}: " + (message.replace("{leaf}", leaf) if "{leaf}" in message
                                              else f"{leaf}: {message}"))


def _refuse_history(plan: Plan, rows: list[list[Any]]) -> None:
    for label, row in zip(plan.labels, rows):
        for i, v in zip(plan.active, row):
            if v is not None and v.requires_grad:
                raise ValueError(
                    f"{plan.op.name}: {label} leaf {plan.paths[i]!r} requires grad and grad mode "
                    "is on, so the result would record autograd history (a graph that grows "
                    "with every call, and a module that is not updated); detach the params "
                    "({k: p.detach() for k, p in model.named_parameters()}), call under "
                    "torch.no_grad(), or pass differentiable=True to differentiate through it")


def _donate(plan: Plan, local: list[list[Any]], dims: list[list[Any]] | None, values: dict[str, Any],
            changed: list[int] | None, traced: bool) -> bool:
    """Whether a donated call writes into its donated trees, after the checks that it may
    (on ``local``: under ``vmap``, the tensors under the wrappers, batched along ``dims``);
    both redone only for what changed since they last passed. It writes eagerly, under
    ``torch.compile`` (functionalization makes it an update of the input buffers) and under
    ``vmap`` when every donated leaf is batched at the current level; never under ``grad``,
    ``jacrev`` or ``jvp``, where the call returns fresh tensors with the pure values."""
    paths, active, written = plan.paths, plan.active, plan.written
    if plan.donation is None or changed is None or traced or any(k in changed for k in written):
        writable = (not plan.sig[4] or torch.compiler.is_compiling()
                    or dims is not None and all(dims[k][i][0] is not None for k in written for i in active))
        spans = _donation.written_spans(((plan.labels[k], paths[i]), local[k][i])
                                        for k in written for i in active) if writable else None
        plan.donation, changed = (writable, spans), list(range(len(local)))
    writable, spans = plan.donation
    if spans is not None:  # None exactly when the call may not write
        chosen = set(active)
        reads: list[tuple[_donation.Label, Any]] = [
            ((plan.labels[k], paths[i]), v) for k in changed for i, v in enumerate(local[k])
            if k not in written or i not in chosen]
        for p in plan.op.hypers:
            v = values[p.name]
            if isinstance(v, torch.Tensor):
                reads.append(((p.name, paths[active[0]] if active else None), v))
            elif p.name in plan.hyper_at:
                leaves = _tree.structure(v)[1]
                reads += [((p.name, paths[i]), leaves[j]) for i, j in plan.hyper_at[p.name].items()]
        _donation.check_reads(spans, reads)
    return writable


def _run_part(plan: Plan, route: str, idx: list[int], groups: list[_dispatch.Group],
              columns: dict[str, list[Any]], values: dict[str, Any], kinds: tuple[Any, ...],
              static: dict[str, Any], in_place: bool, writes: tuple[str, ...], under: Any) -> dict[str, list[Any]]:
    """The body on the leaves ``idx`` (one part), on ``route``."""
    op = plan.op
    leaves = columns[op.main.name]
    hyp = _hyper_columns(plan, idx, values, kinds, leaves)
    prepass = op.prepass
    if prepass is not None:  # it may name the leaves it reduces across (coupled groups)
        paths = plan.paths
        prepass = functools.partial(prepass, paths=paths if len(idx) == len(paths) else
                                    tuple(paths[i] for i in idx))
    if route == "stacked":
        levels, bases, dims = under
        sub = (lambda t: t) if plan.whole else (lambda t: [t[i] for i in idx])
        out = _stacked.run(op.body, prepass, static, columns, {n: sub(b) for n, b in zip(plan.names, bases)},
                           {n: sub(d) for n, d in zip(plan.names, dims)}, hyp, levels, writes, in_place, groups)
        if out is not None:
            return out
        route = "composable"  # a tensor wrapped by a transform that has ended
    per_leaf = route == "composable" or op.output in ("sum", "max")
    if per_leaf or prepass is not None:
        spread = {n: _hyper.cast([v] * len(idx), leaves, plan.sharded) if isinstance(v, torch.Tensor) else v
                  for n, v in hyp.items()}  # a tensor value for every leaf, in its dtype
        ops = _ops.PER_LEAF if per_leaf else _ops.Foreach()
        if prepass is not None:  # once, on every leaf of the part: a reduction across leaves is whole
            more = prepass(ops, **columns, **spread, **static)
            hyp.update(more)
            spread.update(more)
        if per_leaf:
            return _dispatch.named(op.body(ops, **columns, **spread, **static), writes)

    def hypers_of(g: _dispatch.Group) -> dict[str, Any]:
        out = {}
        for n, v in hyp.items():
            if isinstance(v, list) and len(g.idx) < len(idx):
                v = [v[k] for k in g.idx]
            elif isinstance(v, torch.Tensor):  # in the group's dtype (per leaf for DTensors)
                sub = [leaves[k] for k in g.idx] if g.dtensor else [leaves[g.idx[0]]]
                v = _hyper.cast([v] * len(sub), sub, g.dtensor) if g.dtensor else _hyper.cast([v], sub, False)[0]
            out[n] = v
        return out

    return _dispatch.run_fast(op.body, groups, columns, hypers_of, static, writes, in_place, len(idx))


def _hyper_columns(plan: Plan, idx: list[int], values: dict[str, Any], kinds: tuple[Any, ...],
                   leaves: list[torch.Tensor]) -> dict[str, Any]:
    """Each hyperparameter for the leaves ``idx``: a number, one tensor, or a per-leaf list
    (a tree's values, tensors cast to their leaf's dtype and device)."""
    out: dict[str, Any] = {}
    for p, k in zip(plan.op.hypers, kinds):
        v, at = values[p.name], plan.hyper_at.get(p.name)
        if at is not None:
            tree_leaves = _tree.structure(v)[1]
            out[p.name] = _hyper.cast([tree_leaves[at[i]] for i in idx], leaves, plan.sharded)
        else:
            out[p.name] = float(v) if k == _hyper.NUMBER else v
    return out


def _output(plan: Plan, out: dict[str, list[Any]], trees: list[list[Any]]) -> Any:
    op = plan.op
    if op.output == "trees":
        return {n: _tree.unflatten(plan.spec, out[n]) for n in op.writes}
    new, chosen = out[op.main.name], set(plan.active)
    if op.output == "tree":
        return _tree.unflatten(plan.spec, [new[i] if i in chosen else torch.zeros_like(x)
                                           for i, x in enumerate(trees[0])])
    terms = [new[i] for i in plan.active]
    if op.output == "max":
        return torch.stack([_sharding.to_plain(v).to(terms[0].device, torch.float64) for v in terms]).amax()
    if _sharding.any_dtensor(terms):
        # the DTensor leaves' terms are partial sums: add them up, then reduce once
        sharded = [t for t in terms if _sharding.is_dtensor(t)]
        terms = [_sharding.to_plain(sum(sharded[1:], sharded[0])), *(t for t in terms if not _sharding.is_dtensor(t))]
    return sum(terms[1:], terms[0])

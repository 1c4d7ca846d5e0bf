"""DTensor leaves on 2 gloo ranks: every operation gives what it gives on the full tensors,
with each leaf's placements kept, on both paths, for Shard(0), Shard(1), Replicate and
uneven shards, alone or mixed with plain tensors in one tree; the FSDP2 pattern.

Each test runs a whole battery of checks in one pair of processes (spawning is what costs
time); a battery collects every failing check and reports them together.
"""

from __future__ import annotations

from typing import Any

import torch

from _dist import Checks, run_ranks


# ------------------------------------------------------------------------ rank helpers
def _full(x: Any) -> Any:
    from torch.distributed.tensor import DTensor

    return x.full_tensor() if isinstance(x, DTensor) else x


def _same(got: Any, want: Any, like: Any, what: str, tol: float = 1e-6) -> None:
    """``got`` (a tree from DTensor inputs) equals ``want`` (from the full tensors), and each
    leaf has the placements of the input leaf ``like`` (or is plain where it is plain)."""
    from torch.distributed.tensor import DTensor

    if isinstance(want, dict):
        for k in want:
            _same(got[k], want[k], like[k] if isinstance(like, dict) else like, f"{what}.{k}", tol)
        return
    if want is None:
        assert got is None, what
        return
    if isinstance(like, DTensor):
        assert isinstance(got, DTensor), f"{what}: a {type(got).__name__}, not a DTensor"
        assert got.placements == like.placements, f"{what}: placements {got.placements} != {like.placements}"
    elif like is not None:
        assert not isinstance(got, DTensor), f"{what}: a DTensor where the input is plain"
    torch.testing.assert_close(_full(got), want, rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")


def _trees(mesh: Any, mixed: bool) -> tuple[dict, dict, dict, dict]:
    """(DTensor params, DTensor grads, full params, full grads): a Shard(0) leaf of 5 rows
    (uneven on 2 ranks), a Shard(1) one, a Replicate one, and in a mixed tree a plain leaf."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    torch.manual_seed(0)  # every rank holds the same full tensors
    full = {"a": torch.randn(5, 6, dtype=torch.float64), "b": torch.randn(4, 6, dtype=torch.float64),
            "c": torch.randn(6, dtype=torch.float64), "d": torch.randn(3, 2, dtype=torch.float64)}
    full = {k: v * (v.abs() > 0.3) for k, v in full.items()}  # exact zeros, some whole rows
    full["a"][1] = 0.0
    grads = {k: torch.randn_like(v) for k, v in full.items()}
    placements = {"a": [Shard(0)], "b": [Shard(1)], "c": [Replicate()]}
    keys = list(full) if mixed else list(placements)

    def shard(tree: dict) -> dict:
        return {k: distribute_tensor(tree[k], mesh, placements[k]) if k in placements else tree[k].clone()
                for k in keys}

    return shard(full), shard(grads), {k: full[k] for k in keys}, {k: grads[k] for k in keys}


# ------------------------------------------------------------------------ penalties
def _penalties_battery(rank: int, world: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    import funcreg as fr

    mesh = init_device_mesh("cpu", (world,))
    check = Checks(rank)
    families: list[tuple[str, Any, dict]] = [
        ("l1", fr.l1, {}), ("l2", fr.l2, {}), ("elastic_net", fr.elastic_net, {"l1_ratio": 0.3}),
        ("group_lasso dim=0", fr.group_lasso, {"dim": 0}), ("group_lasso dim=1", fr.group_lasso, {"dim": -1}),
        ("group_lasso dim=None", fr.group_lasso, {"dim": None}),
    ]
    for mixed in (False, True):
        params, grads, full_p, full_g = _trees(mesh, mixed)
        anchor = {k: v * 0.5 for k, v in params.items()}
        families_here = families + [("l2_sp", fr.l2_sp, {"anchor": anchor})]
        for path in ("fast", "composable"):
            for lam in (0.1, torch.tensor(0.1, dtype=torch.float64)):
                tag = f"{'mixed' if mixed else 'dtensor'} {path} lam={type(lam).__name__}"
                for name, pen, opts in families_here:
                    full_opts = {k: ({j: _full(x) for j, x in v.items()} if k == "anchor" else v)
                                 for k, v in opts.items()}

                    def run_all(pen: Any = pen, opts: dict = opts, full_opts: dict = full_opts) -> None:
                        with fr._dispatch.forced(path):
                            value = pen(params, lam, **opts)
                            assert not hasattr(value, "placements"), "the value must be a plain tensor"
                            torch.testing.assert_close(value, pen(full_p, lam, **full_opts))
                            _same(pen.grad(params, lam, **opts), pen.grad(full_p, lam, **full_opts), params, "grad")
                            _same(pen.add_grad(grads, params, lam, **opts),
                                  pen.add_grad(full_g, full_p, lam, **full_opts), grads, "add_grad")
                            _same(pen.prox(params, lam, 0.7, **opts), pen.prox(full_p, lam, 0.7, **full_opts),
                                  params, "prox")
                            # donated: the same values, written into the local shards
                            donated = {k: v.clone() for k, v in params.items()}
                            ptrs = {k: _local_ptr(v) for k, v in donated.items()}
                            out = pen.prox(donated, lam, 0.7, donate=True, **opts)
                            _same(out, pen.prox(full_p, lam, 0.7, **full_opts), params, "donated prox")
                            assert all(out[k] is donated[k] and _local_ptr(out[k]) == ptrs[k] for k in out)

                    check.attempt(f"{tag} {name}", run_all)

    check.done()


def _more_penalties_battery(rank: int, world: int) -> None:
    """The families beyond the first five, and the projections, on the same trees."""
    from torch.distributed.device_mesh import init_device_mesh

    import funcreg as fr

    mesh = init_device_mesh("cpu", (world,))
    check = Checks(rank)
    for mixed in (False, True):
        params, grads, full_p, full_g = _trees(mesh, mixed)
        weights = fr.select.weights
        families: list[tuple[str, Any, dict, bool]] = [
            ("sparse_group_lasso", fr.sparse_group_lasso, {"l1_ratio": 0.4, "dim": -1}, True),
            ("mcp", fr.mcp, {"gamma": 2.5}, True),
            ("scad", fr.scad, {}, True),
            ("l0", fr.l0, {}, False),
            ("nuclear_norm", fr.nuclear_norm, {"where": weights}, True),
            ("orthogonal", fr.orthogonal, {"where": weights}, True),
        ]
        for path in ("fast", "composable"):
            tag = f"{'mixed' if mixed else 'dtensor'} {path}"
            for name, pen, opts, has_grad in families:
                def run_all(pen: Any = pen, opts: dict = opts, has_grad: bool = has_grad) -> None:
                    with fr._dispatch.forced(path):
                        torch.testing.assert_close(pen(params, 0.1, **opts), pen(full_p, 0.1, **opts))
                        if has_grad:
                            _same(pen.grad(params, 0.1, **opts), pen.grad(full_p, 0.1, **opts), params, "grad")
                            _same(pen.add_grad(grads, params, 0.1, **opts),
                                  pen.add_grad(full_g, full_p, 0.1, **opts), grads, "add_grad")
                        if "prox" not in pen.without:
                            _same(pen.prox(params, 0.1, 0.7, **opts), pen.prox(full_p, 0.1, 0.7, **opts),
                                  params, "prox")
                        if "lambda_max" not in pen.without:
                            torch.testing.assert_close(pen.lambda_max(grads, **opts),
                                                       pen.lambda_max(full_g, **opts))

                check.attempt(f"{tag} {name}", run_all)
            projections: list[tuple[str, Any, tuple, dict]] = [
                ("max_norm dim=0", fr.project.max_norm, (1.0,), {}),
                ("max_norm dim=1", fr.project.max_norm, (1.0,), {"dim": -1, "where": weights}),
                ("l2_ball", fr.project.l2_ball, (1.0,), {}),
                ("l1_ball", fr.project.l1_ball, (1.0,), {}),
                ("box", fr.project.box, (-0.5, 0.5), {}),
                ("non_negative", fr.project.non_negative, (), {}),
            ]
            for name, project, args, kw in projections:
                def run_projection(project: Any = project, args: tuple = args, kw: dict = kw) -> None:
                    with fr._dispatch.forced(path):
                        _same(project(params, *args, **kw), project(full_p, *args, **kw), params, name)

                check.attempt(f"{tag} project.{name}", run_projection)
        check.attempt(f"{'mixed' if mixed else 'dtensor'} sparsity", lambda: _same_sparsity(params, full_p))
    check.done()


def _same_sparsity(params: dict, full: dict) -> None:
    import funcreg as fr

    for dim in (None, 0):
        got, want = fr.sparsity(params, dim=dim), fr.sparsity(full, dim=dim)
        assert str(got) == str(want), f"{got}\n!=\n{want}"


def test_more_penalties_on_dtensors() -> None:
    run_ranks(_more_penalties_battery, timeout=120)


def _penalties_tail(rank: int, world: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    import funcreg as fr

    mesh = init_device_mesh("cpu", (world,))
    check = Checks(rank)

    # the value inside a loss: its backward reaches the DTensor leaves (and a plain leaf)
    def backward() -> None:
        params, _, full_p, _ = _trees(mesh, mixed=True)
        leaves = {k: v.requires_grad_() for k, v in params.items()}
        full = {k: v.clone().requires_grad_() for k, v in full_p.items()}
        for tree in (leaves, full):
            loss = tree["d"].square().sum() + fr.l2(tree, 0.3) + fr.group_lasso(tree, 0.2, dim=-1)
            loss.backward()
        _same({k: v.grad for k, v in leaves.items()}, {k: v.grad for k, v in full.items()}, params, "backward")

    check.attempt("penalty value in a loss, .backward()", backward)

    # torch.func.grad of a penalized loss on a mixed tree
    def func_grad() -> None:
        params, _, full_p, _ = _trees(mesh, mixed=True)
        loss = fr.penalized(lambda p: p["d"].square().sum(), lambda p: fr.l1(p, 0.1) + fr.group_lasso(p, 0.3))
        _same(torch.func.grad(loss)(params), torch.func.grad(loss)(full_p), params, "torch.func.grad")

    check.attempt("torch.func.grad of a penalized loss", func_grad)

    # vmap over a batched λ, DTensor params captured
    def vmap_lam() -> None:
        params, _, full_p, _ = _trees(mesh, mixed=True)
        lams = torch.tensor([0.0, 0.2, 0.5], dtype=torch.float64)
        for pen in (fr.l1, fr.group_lasso, fr.elastic_net):
            got = torch.func.vmap(lambda lam: pen.prox(params, lam, 1.0))(lams)
            vals = torch.func.vmap(lambda lam: pen(params, lam))(lams)
            for j, lam in enumerate(lams):
                want = pen.prox(full_p, lam, 1.0)
                for k in want:
                    torch.testing.assert_close(_full(got[k])[j], want[k], msg=lambda m: f"{pen} {k}: {m}")
                torch.testing.assert_close(_full(vals)[j], pen(full_p, lam))
        # linear algebra under vmap: the results come back replicated, with the values
        weights = fr.select.weights
        for name, call in [
            ("nuclear_norm.grad", lambda p, lam: fr.nuclear_norm.grad(p, lam, where=weights)),
            ("nuclear_norm.prox", lambda p, lam: fr.nuclear_norm.prox(p, lam, 1.0, where=weights)),
            ("orthogonal.grad", lambda p, lam: fr.orthogonal.grad(p, lam, where=weights)),
        ]:
            got = torch.func.vmap(lambda lam: call(params, lam))(lams)
            for j, lam in enumerate(lams):
                want = call(full_p, lam)
                for k in want:
                    torch.testing.assert_close(_full(got[k])[j], want[k], msg=lambda m: f"{name} {k}: {m}")

    check.attempt("vmap over a batched lam", vmap_lam)

    # a rank whose shard is empty (FSDP2's shards of a Linear(n, 1)): lambda_max must not
    # fail on that rank alone and leave the other one waiting in the collective
    def empty_shard_lambda_max() -> None:
        from torch.distributed.tensor import Shard, distribute_tensor

        torch.manual_seed(1)
        full = {"w": torch.randn(1, 4, dtype=torch.float64), "b": torch.randn(1, dtype=torch.float64)}
        grads = {k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in full.items()}
        for pen, opts in [(fr.l1, {}), (fr.elastic_net, {"l1_ratio": 0.5}), (fr.group_lasso, {"dim": -1}),
                          (fr.mcp, {})]:
            torch.testing.assert_close(pen.lambda_max(grads, **opts), pen.lambda_max(full, **opts))

    check.attempt("lambda_max with an empty shard", empty_shard_lambda_max)

    # a sharded dim of size 1, the other dims grouped: the group norms have the leaf's
    # own shape, and the results must keep its placements
    def size_one_sharded_dims() -> None:
        from torch.distributed.tensor import Shard, distribute_tensor

        torch.manual_seed(2)
        full = {"w": torch.randn(1, 4, dtype=torch.float64), "v": torch.randn(3, 1, dtype=torch.float64)}
        dims = {"w": -1, "v": 0}
        params = {k: distribute_tensor(v, mesh, [Shard(0) if k == "w" else Shard(1)]) for k, v in full.items()}
        for k in full:
            p, f, dim = {k: params[k]}, {k: full[k]}, dims[k]
            for path in ("fast", "composable"):
                with fr._dispatch.forced(path):
                    for pen, opts in [(fr.group_lasso, {"dim": dim}),
                                      (fr.sparse_group_lasso, {"dim": dim, "l1_ratio": 0.4})]:
                        _same(pen.grad(p, 0.1, **opts), pen.grad(f, 0.1, **opts), p, f"{path} {pen} grad {k}")
                        _same(pen.prox(p, 0.1, 0.5, **opts), pen.prox(f, 0.1, 0.5, **opts), p,
                              f"{path} {pen} prox {k}")
                    _same(fr.project.max_norm(p, 0.5, dim=dim), fr.project.max_norm(f, 0.5, dim=dim), p,
                          f"{path} max_norm {k}")

    check.attempt("sharded dims of size 1", size_one_sharded_dims)
    check.done()


def _local_ptr(x: Any) -> int:
    return getattr(x, "_local_tensor", x).data_ptr()


def test_penalties_on_dtensors() -> None:
    run_ranks(_penalties_battery, timeout=120)


def test_penalty_values_in_losses_and_transforms_on_dtensors() -> None:
    run_ranks(_penalties_tail, timeout=120)


# ------------------------------------------------------------------------ steps
def _steps_battery(rank: int, world: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    import funcreg as fr

    mesh = init_device_mesh("cpu", (world,))
    check = Checks(rank)
    configs: list[tuple[str, Any, dict, dict]] = [
        ("sgd", fr.sgd, {}, dict(lr=0.1)),
        ("sgd momentum nesterov wd", fr.sgd, {}, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
        ("sgd dampening", fr.sgd, {}, dict(lr=0.1, momentum=0.9, dampening=0.3)),
        ("adam coupled wd", fr.adam, {}, dict(lr=0.05, weight_decay=0.1)),
        ("adamw amsgrad", fr.adamw, {"amsgrad": True}, dict(lr=0.05, amsgrad=True)),
        ("adamw tensor lr", fr.adamw, {}, dict(lr=torch.tensor(0.05, dtype=torch.float64))),
        ("adam tensor betas", fr.adam, {}, dict(lr=0.05, betas=(torch.tensor(0.8, dtype=torch.float64), 0.99))),
    ]
    for mixed in (False, True):
        params, grads, full_p, full_g = _trees(mesh, mixed)
        for path in ("fast", "composable"):
            for name, opt, init, kw in configs:
                def run_steps(opt: Any = opt, init: dict = init, kw: dict = kw) -> None:
                    with fr._dispatch.forced(path if path == "composable" else None):
                        p, s = params, opt.init(params, **init)
                        fp, fs = full_p, opt.init(full_p, **init)
                        dp, ds = {k: v.clone() for k, v in params.items()}, opt.init(params, **init)
                        for _ in range(3):
                            p, s = opt.step(p, grads, s, **kw)
                            fp, fs = opt.step(fp, full_g, fs, **kw)
                            ptrs = {k: _local_ptr(v) for k, v in dp.items()}
                            dp, ds = opt.step(dp, grads, ds, donate=True, **kw)
                            assert all(_local_ptr(dp[k]) == ptrs[k] for k in dp), "donated step moved storage"
                        _same(p, fp, params, "params")
                        _same(dp, fp, params, "donated params")
                        for key in fs:
                            if key != "step":
                                _same(s[key], fs[key], params, f"state[{key!r}]")
                        if opt is not fr.sgd:
                            kwargs = {k: kw[k] for k in ("lr", "betas") if k in kw}
                            kwargs["amsgrad"] = kw.get("amsgrad", False)
                            _same(opt.step_size(s, **kwargs), opt.step_size(fs, **kwargs), params, "step_size")

                check.attempt(f"{'mixed' if mixed else 'dtensor'} {path} {name}", run_steps)

    # the fast path is the default on DTensors, and AdamW's fused kernel runs there
    def fused_on_dtensors() -> None:
        params, grads, _, _ = _trees(mesh, mixed=False)
        kernel, calls = torch._fused_adamw_, []

        def spy(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return kernel(*args, **kwargs)

        torch._fused_adamw_ = spy
        try:
            fr.adamw.step(params, grads, fr.adamw.init(params), lr=0.05)
        finally:
            torch._fused_adamw_ = kernel
        assert calls, "fr.adamw.step on DTensors did not take the fused kernel"

    check.attempt("fused AdamW on DTensors", fused_on_dtensors)
    check.done()


def test_steps_on_dtensors() -> None:
    run_ranks(_steps_battery, timeout=120)


# ------------------------------------------------------------------------ FSDP2
def _fsdp_battery(rank: int, world: int) -> None:
    """``fully_shard`` model, ``loss.backward()``, then funcreg on the DTensor params and
    ``.grad``s, donated into the module's own shards; against an unsharded copy trained
    on the full batch with the same funcreg calls on plain tensors."""
    import copy

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import funcreg as fr

    mesh = init_device_mesh("cpu", (world,))
    check = Checks(rank)
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    model = copy.deepcopy(ref)
    fully_shard(model[0], mesh=mesh)
    fully_shard(model, mesh=mesh)
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    local = slice(rank * 4, rank * 4 + 4)  # each rank its half of the batch
    lam, lr = 1e-2, 5e-2
    state = ref_state = None

    def train() -> None:
        nonlocal state, ref_state
        for _ in range(4):
            model.zero_grad()
            torch.nn.functional.mse_loss(model(x[local]), y[local]).backward()
            params = {k: p.detach() for k, p in model.named_parameters()}  # after backward: sharded
            grads = {k: p.grad for k, p in model.named_parameters()}
            state = state or fr.adamw.init(params)
            grads = fr.l2.add_grad(grads, params, lam, where=fr.select.weights, donate=True)
            params, state = fr.adamw.step(params, grads, state, lr=lr, donate=True)
            fr.l1.prox(params, lam, lr, where=fr.select.weights, donate=True)

            ref.zero_grad()
            torch.nn.functional.mse_loss(ref(x), y).backward()
            rp = {k: p.detach() for k, p in ref.named_parameters()}
            rg = {k: p.grad for k, p in ref.named_parameters()}
            ref_state = ref_state or fr.adamw.init(rp)
            rg = fr.l2.add_grad(rg, rp, lam, where=fr.select.weights, donate=True)
            rp, ref_state = fr.adamw.step(rp, rg, ref_state, lr=lr, donate=True)
            fr.l1.prox(rp, lam, lr, where=fr.select.weights, donate=True)
        for (k, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
            torch.testing.assert_close(p.detach().full_tensor(), q.detach(), msg=lambda m: f"{k}: {m}")
        # the next forward uses the updated shards
        torch.testing.assert_close(model(x), ref(x))

    check.attempt("FSDP2 + funcreg donated into the shards", train)
    check.done()


def test_fsdp2_pattern() -> None:
    run_ranks(_fsdp_battery, timeout=120)


# ------------------------------------------------------------------------ coupled groups
def _coupled_battery(rank: int, world: int) -> None:
    """``groups=`` on DTensor leaves: each coupling's group norms are global over leaves
    sharded in different ways (a Shard(0) leaf cut along its columns, a Shard(1) one along
    its rows, a Replicate vector, a plain leaf), on both paths, donated, under vmap over λ,
    and for couplings that overlap."""
    from torch.distributed.device_mesh import init_device_mesh

    import funcreg as fr

    mesh = init_device_mesh("cpu", (world,))
    check = Checks(rank)
    units = [{"a": 1, "c": 0}, fr.Coupling({"b": 0}, groups=2), {"d": 0}]
    overlapping = [{"a": 1, "c": 0}, {"a": 0}]
    lams = torch.tensor([0.0, 0.3, 1.5], dtype=torch.float64)
    for mixed in (False, True):
        params, grads, full_p, full_g = _trees(mesh, mixed)
        groups = units if mixed else units[:2]
        for path in ("fast", "composable"):
            for name, pen, opts in [("group_lasso", fr.group_lasso, {}),
                                    ("sparse_group_lasso", fr.sparse_group_lasso, {"l1_ratio": 0.3})]:
                def run_all(pen: Any = pen, opts: dict = opts, path: str = path) -> None:
                    kw = {**opts, "groups": groups}
                    with fr._dispatch.forced(path):
                        torch.testing.assert_close(pen(params, 0.4, **kw), pen(full_p, 0.4, **kw))
                        _same(pen.grad(params, 0.4, **kw), pen.grad(full_p, 0.4, **kw), params, "grad")
                        _same(pen.add_grad(grads, params, 0.4, **kw), pen.add_grad(full_g, full_p, 0.4, **kw),
                              grads, "add_grad")
                        want = pen.prox(full_p, 0.4, 0.7, **kw)
                        _same(pen.prox(params, 0.4, 0.7, **kw), want, params, "prox")
                        donated = {k: v.clone() for k, v in params.items()}
                        out = pen.prox(donated, 0.4, 0.7, donate=True, **kw)
                        _same(out, want, params, "donated prox")
                        assert all(out[k] is donated[k] for k in out)
                        torch.testing.assert_close(pen.lambda_max(grads, **kw), pen.lambda_max(full_g, **kw))
                        _same(torch.func.grad(lambda q: pen(q, 0.4, **kw))(params), pen.grad(full_p, 0.4, **kw),
                              params, "torch.func.grad of the value")
                        over = {**opts, "groups": overlapping}
                        _same(pen.grad(params, 0.4, **over), pen.grad(full_p, 0.4, **over), params, "overlap grad")
                        _same(pen.prox(params, 0.4, 0.7, **over), pen.prox(full_p, 0.4, 0.7, **over), params,
                              "overlap prox")

                check.attempt(f"{'mixed' if mixed else 'dtensor'} {path} {name}", run_all)

        def vmap_lam() -> None:
            got = torch.func.vmap(lambda lam: fr.group_lasso.prox(params, lam, 1.0, groups=groups))(lams)
            vals = torch.func.vmap(lambda lam: fr.group_lasso(params, lam, groups=groups))(lams)
            for j, lam in enumerate(lams):
                want = fr.group_lasso.prox(full_p, lam, 1.0, groups=groups)
                for k in want:
                    torch.testing.assert_close(_full(got[k])[j], want[k], msg=lambda m: f"{k}: {m}")
                torch.testing.assert_close(_full(vals)[j], fr.group_lasso(full_p, lam, groups=groups))

        check.attempt(f"{'mixed' if mixed else 'dtensor'} vmap over lam", vmap_lam)
    check.done()


def test_coupled_groups_on_dtensors() -> None:
    run_ranks(_coupled_battery, timeout=120)

"""From sparse weights to a smaller model: the couplings of a module, read from its
dataflow, and a smaller copy of it without the groups that are zero.

``couplings(model, *example_inputs)`` lists the units of each prunable layer as
:class:`fr.Coupling`\\ s (rows of a weight with their bias and a following BatchNorm's
entries; channels tied across a residual add; attention heads); a group penalty on them
zeroes whole units; ``shrink(model, params, couplings)`` cuts those units out of a copy of
the model, folding their constant outputs into the next layer, and checks that the copy
computes what the model did (on the example inputs the couplings were found with).
``after_step`` applies a prox after every ``optimizer.step()`` of a classic ``torch.optim``
loop. See docs/pruning.md.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from funcreg.coupling import Coupling
from funcreg.prune._dataflow import Dataflow
from funcreg.prune._optimizer_hook import after_step
from funcreg.prune._report import CouplingShrink, ShrinkReport, Shrunk
from funcreg.prune._shrink import shrink as _shrink
from funcreg.prune._traced import inputs_of, remember

__all__ = ["CouplingShrink", "ShrinkReport", "Shrunk", "after_step", "couplings", "shrink"]


def couplings(model: nn.Module, *example_inputs: Any) -> list[Coupling]:
    """The couplings of ``model``'s prunable units, found from its dataflow.

    ``model`` is traced with ``torch.fx`` and run once on ``example_inputs`` (in eval mode,
    without gradients; its modes are restored) to learn every value's shape. Each layer
    whose output units are read only by other layers' inputs gets one coupling: a Linear's
    out features or a conv's out channels (``weight`` rows and ``bias``, dim 0) with the
    ``weight`` and ``bias`` of a BatchNorm that follows, and G = the number of units.
    Layers whose outputs are added (a residual block) share one coupling, spanning all of
    them. Attention heads are one coupling per attention: for q/k/v Linears split into heads
    and fed to ``F.scaled_dot_product_attention`` (Hugging Face style), their rows and
    biases with G = the number of heads; for ``nn.MultiheadAttention``, the columns of
    ``out_proj.weight`` (dim 1) with G = ``num_heads`` (its fused ``in_proj_weight`` holds
    each head's rows in three places, which one chunk cannot name; a head whose output
    columns are zero is removed whole).

    Units that are not prunable get no coupling: the model's outputs, channels normalized
    together (LayerNorm, a softmax or a reduction over them), channels read by an
    ``nn.MultiheadAttention`` or a grouped convolution, channels combined with a tensor
    that varies with the input. Couplings never overlap; paths are as in
    ``named_parameters()``.

    Args:
        model: the module.
        example_inputs: the positional arguments of one forward call (a batch of two or
            more, so that the batch dim is not mistaken for a size-1 dim).

    Returns:
        A list of :class:`fr.Coupling`, in the order the layers run. Each remembers, privately,
        a copy of ``example_inputs``, which :func:`shrink` then needs no more of (they are
        still equal to, and hash like, plain couplings with the same dims and G).

    Raises:
        ValueError: ``torch.fx`` cannot trace the model (forward branches on tensor
            values), or a node reads tracked units through an op fr.prune does not know
            (the node and the layers are named): never a guessed coupling.
        TypeError: ``model`` is not an ``nn.Module``, or no example input is given.

    >>> import torch, funcreg as fr
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
    ...                             torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(36, 2))
    >>> fr.prune.couplings(model, torch.randn(1, 1, 5, 5))
    [Coupling({'0.weight': 0, '0.bias': 0, '1.weight': 0, '1.bias': 0}, groups=4)]
    """
    modes = {name: m.training for name, m in model.named_modules()} if isinstance(model, nn.Module) else {}
    try:
        if isinstance(model, nn.Module):
            model.eval()
        found = [space.coupling() for space in Dataflow(model, example_inputs).spaces]
        return remember(found, example_inputs)
    finally:
        for name, m in (model.named_modules() if isinstance(model, nn.Module) else ()):
            m.train(modes[name])


def shrink(
    model: nn.Module, params: dict[str, torch.Tensor], couplings: Any, *example_inputs: Any
) -> Shrunk:
    """A smaller copy of ``model`` without the zero groups of ``couplings`` in ``params``.

    A group is removed when its incoming weights (its rows in every producing layer's
    weight; for ``nn.MultiheadAttention`` heads, its ``out_proj`` columns) are all exactly
    zero, or when every layer that reads it does so through all-zero columns. It is cut
    out everywhere it is held or read: the producers' rows and bias entries, a
    BatchNorm's weight, bias and running statistics, the readers' columns (a block of them
    after a ``Flatten``), the q/k/v rows and o columns of an attention head, with
    ``in_features``, ``out_channels``, ``num_features`` and the head count (``num_heads``,
    ``num_attention_heads``, ``n_heads`` or ``n_head`` on the attention module; none is
    needed where the split into heads is written with -1) updated;
    an ``nn.MultiheadAttention`` that loses heads is replaced by a module with its forward
    and its parameter names, which returns no attention weights.

    A removed unit whose incoming weights are zero still outputs a constant (its bias
    through its BatchNorm and activation, read from an eval-mode run on the example
    inputs); that constant is folded into each reader's bias where this is exact: a Linear,
    a conv without zero padding. Where it is not (a reader with zero padding, or without a
    bias, and a nonzero constant; a value that differs by position), the group is kept and
    reported. Then the smaller model is run on the example inputs and compared with the
    original (float tolerance): a difference is an error, never a silently changed model.

    Equality holds in eval mode: in training mode a BatchNorm normalizes with batch
    statistics, and the folded constants are the eval-mode ones. The copy keeps each
    module's training flag.

    Args:
        model: the module; it is not modified.
        params: ``{path: tensor}`` as ``functional_call`` takes them (parameters, and
            buffers if you pass any); paths not given take the model's own values.
        couplings: couplings from :func:`couplings` (a list, or one; a plain dict
            ``{path: dim}`` is a coupling with the default G); only their groups are
            considered, in the order given.
        example_inputs: the positional arguments of one forward call, as for
            :func:`couplings`; optional when ``couplings`` came from :func:`couplings`,
            whose example inputs are then used (those of the first coupling that has them).

    Returns:
        A pair ``(smaller_model, smaller_params)`` that also carries ``.report``, a
        :class:`ShrinkReport`: per coupling the groups removed, the zero groups kept and
        why, and the parameter counts; ``str()`` of it is a table.
        ``smaller_params`` has the keys of ``params``; the model holds the same values.

    Raises:
        ValueError: a coupling is not one of the model's (as :func:`couplings` finds them),
            is given twice, or does not fit ``params``; a params leaf is not the model's or
            has another shape; the model cannot be analysed (see :func:`couplings`).
        TypeError: ``params`` is not a dict of tensors; no example inputs are given and no
            coupling remembers any (couplings written by hand).
        RuntimeError: the smaller model fails or differs from the original on the example
            inputs (an op fr.prune misread: please report it).

    >>> import torch, funcreg as fr
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Sigmoid(), torch.nn.Linear(4, 2))
    >>> x = torch.randn(5, 3)
    >>> params = {k: v.detach().clone() for k, v in model.named_parameters()}
    >>> params["0.weight"][1:3] = 0.0              # units 1 and 2 are dead, their biases are not
    >>> small, small_params = fr.prune.shrink(model, params, fr.prune.couplings(model, x))
    >>> small
    Sequential(
      (0): Linear(in_features=3, out_features=2, bias=True)
      (1): Sigmoid()
      (2): Linear(in_features=2, out_features=2, bias=True)
    )
    >>> f = torch.func.functional_call
    >>> torch.allclose(f(small, small_params, (x,)), f(model, params, (x,)), atol=1e-6)
    True
    >>> print(fr.prune.shrink(model, params, fr.prune.couplings(model, x)).report)
    coupling  groups  removed  zero, kept  live
    0         4       2        0           2
    parameters: 26 -> 14 (53.8%)
    """
    if not example_inputs:
        example_inputs = inputs_of(couplings) or ()
        if not example_inputs:
            raise TypeError(
                "fr.prune.shrink needs example inputs (the tensors forward is called with): pass "
                "them, shrink(model, params, couplings, x), or pass couplings from "
                "fr.prune.couplings(model, x), which remember theirs")
    return _shrink(model, params, couplings, *example_inputs)

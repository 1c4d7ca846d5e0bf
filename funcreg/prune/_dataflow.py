"""Which layers' units are read by which layers: a module's dataflow, read from torch.fx.

The module is traced by ``torch.fx`` (a tracer that stops at the layer types below and goes
into every other module), its nodes get their shapes from one run on the example inputs
(``ShapeProp``), and each node's value is followed as a *track*: which dim of the value
holds the channels of which *space*. A space starts at a layer's output units (a Linear's
out features, a conv's out channels) and grows by union where values meet (``a + b`` ties
channel i of ``a`` to channel i of ``b``). Along the way it collects the layers that hold
its units (producers, BatchNorms) and those that read them (the next Linear or conv, whose
input columns it occupies, each as a block of columns after a ``Flatten``).

Ops that mix the channels of a value (a LayerNorm, a reduction over the channels, the
model's output, an untracked tensor added to it) *block* its space: those units are not
prunable and get no coupling. An op outside the known vocabulary that reads a tracked value
is an error naming the node, never a guess.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from funcreg.coupling import Coupling

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_MIXING_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.InstanceNorm1d,
                 nn.InstanceNorm2d, nn.InstanceNorm3d, nn.RMSNorm)
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.LogSigmoid, nn.Tanhshrink, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout,
)
# pooling over the trailing (spatial) dims, channel by channel
_POOL_MODULES = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2,
    nn.AvgPool3d: 3, nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3,
}
_POOL_FUNCTIONS = {
    F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2,
    F.avg_pool3d: 3, F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2,
    F.adaptive_avg_pool3d: 3, F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2,
    F.adaptive_max_pool3d: 3,
}
_LEAF_TYPES = (nn.Linear, *_CONVS, *_NORMS, *_MIXING_NORMS, *_ELEMENTWISE_MODULES,
               *_POOL_MODULES, nn.PReLU, nn.Flatten, nn.Softmax, nn.MultiheadAttention,
               nn.Embedding)
_UNARY_FUNCTIONS = {
    torch.relu, F.relu, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.gelu, F.silu,
    F.leaky_relu, F.elu, F.selu, F.celu, F.softplus, F.softsign, F.hardtanh, F.relu6,
    F.hardswish, F.hardsigmoid, F.mish, F.logsigmoid, F.dropout, F.dropout1d, F.dropout2d,
    F.dropout3d, F.alpha_dropout, torch.exp, torch.abs, torch.neg, operator.neg, torch.square,
    torch.clamp, torch.erf,
}
_UNARY_METHODS = {
    "relu", "sigmoid", "tanh", "exp", "abs", "neg", "square", "clamp", "contiguous", "clone",
    "detach", "float", "double", "half", "bfloat16", "relu_", "sigmoid_", "tanh_", "clamp_",
}
_BINARY_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div,
}
_BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_"}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape}
_RESHAPE_METHODS = {"flatten", "view", "reshape"}
_REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_SHAPE_METHODS = {"size", "dim", "numel"}
_SOFTMAX = {F.softmax, torch.softmax, F.log_softmax, torch.log_softmax}


@dataclass
class Producer:
    """A layer whose output units are channels of a space: its weight's rows, its bias."""

    module: str
    weight: str
    bias: str | None


@dataclass
class Norm:
    """A BatchNorm over a space's channels, in eval mode a per-channel affine map."""

    module: str
    weight: str | None
    bias: str | None
    running_mean: str
    running_var: str


@dataclass
class Reader:
    """A layer whose input columns read a space: a Linear's ``weight[:, cols]``, a conv's
    ``weight[:, channels]``; ``node`` is the value it reads, with the channels on ``axis``."""

    module: str
    kind: str  # "linear" or "conv"
    weight: str
    bias: str | None
    node: fx.Node | None
    axis: int
    zero_padding: bool = False  # a conv whose border reads zeros, not a constant channel


@dataclass
class Space:
    """Channels that are pruned together, with everything that holds or reads them."""

    size: int
    groups: int | None = None  # None: one group per channel
    producers: list[Producer] = field(default_factory=list)
    norms: list[Norm] = field(default_factory=list)
    readers: list[Reader] = field(default_factory=list)
    blocked: str | None = None
    # a node after which a constant channel's value depends on the input's size (a sum or
    # a softmax over other dims): its constant folds exactly only for inputs of that size
    sized: str | None = None
    # nn.MultiheadAttention whose heads this is (then its only reader is out_proj)
    mha: str | None = None
    heads: bool = False
    # the head split or merge names its sizes as constants (not -1): the module's head count
    # attribute must change with the heads
    fixed_heads: bool = False

    @property
    def num_groups(self) -> int:
        return self.groups if self.groups is not None else self.size

    @property
    def label(self) -> str:
        if self.mha is not None:
            return f"{self.mha} (heads)"
        names = ", ".join(p.module for p in self.producers)
        if self.norms:
            names += " + " + ", ".join(n.module for n in self.norms)
        return names + (" (heads)" if self.heads else "")

    def coupling(self) -> Coupling:
        if self.mha is not None:
            return Coupling({f"{self.mha}.out_proj.weight": 1}, groups=self.num_groups)
        dims: dict[str, int] = {}
        for p in self.producers:
            dims[p.weight] = 0
            if p.bias is not None:
                dims[p.bias] = 0
        for n in self.norms:
            for path in (n.weight, n.bias):
                if path is not None:
                    dims[path] = 0
        return Coupling(dims, groups=self.num_groups)


@dataclass(frozen=True)
class _Track:
    """The value's dim ``axis`` holds the space's channels, each as ``block`` entries."""

    space: int
    axis: int
    block: int = 1


@dataclass(frozen=True)
class _Heads:
    """The value's dim ``head_axis`` holds the space's heads, ``inner_axis`` their channels."""

    space: int
    head_axis: int
    inner_axis: int


_Value = _Track | _Heads


class _Tracer(fx.Tracer):
    """Stops at the layer types fr.prune knows and goes into every other module (so that a
    torch.nn container or block is read op by op rather than taken as a black box)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _LEAF_TYPES)


class Dataflow:
    """The spaces of ``model`` (in eval mode), read with ``example_inputs``."""

    def __init__(self, model: nn.Module, example_inputs: tuple[Any, ...]) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, not {type(model).__name__}")
        if not example_inputs:
            raise TypeError("fr.prune needs example inputs: the tensors forward is called with")
        self.model = model
        try:
            graph = _Tracer().trace(model)
        except Exception as e:  # torch.fx raises many types; all mean "not traceable"
            raise ValueError(
                f"torch.fx cannot trace {type(model).__name__}: {type(e).__name__}: {e}. "
                "fr.prune reads a module's dataflow with torch.fx, so forward must not "
                "branch on tensor values"
            ) from e
        self.graph_module = fx.GraphModule(model, graph)
        with torch.no_grad():
            ShapeProp(self.graph_module).propagate(*example_inputs)
        self.modules = dict(model.named_modules())
        self._spaces: list[Space] = []
        self._parent: list[int] = []
        self._tracks: dict[fx.Node, _Value] = {}
        self._input_dependent: set[fx.Node] = set()
        for node in self.graph_module.graph.nodes:
            self._visit(node)
        self.spaces = self._collect()

    # ------------------------------------------------------------------ union-find
    def _new(self, size: int) -> int:
        self._spaces.append(Space(size))
        self._parent.append(len(self._parent))
        return len(self._parent) - 1

    def _find(self, i: int) -> int:
        while self._parent[i] != i:
            self._parent[i] = self._parent[self._parent[i]]
            i = self._parent[i]
        return i

    def _space(self, i: int) -> Space:
        return self._spaces[self._find(i)]

    def _union(self, a: int, b: int, node: fx.Node) -> int:
        a, b = self._find(a), self._find(b)
        if a == b:
            return a
        sa, sb = self._spaces[a], self._spaces[b]
        if sa.size != sb.size or (sa.groups is not None and sb.groups is not None and sa.groups != sb.groups):
            self._fail(node, f"it ties the units of {sa.label} to those of {sb.label}, which "
                             "are not cut into the same groups")
        sa.groups = sa.groups if sa.groups is not None else sb.groups
        sa.heads = sa.heads or sb.heads
        sa.fixed_heads = sa.fixed_heads or sb.fixed_heads
        sa.producers += sb.producers
        sa.norms += sb.norms
        sa.readers += sb.readers
        sa.blocked = sa.blocked or sb.blocked
        sa.sized = sa.sized or sb.sized
        self._parent[b] = a
        return a

    def _block(self, value: _Value, why: str) -> None:
        space = self._space(value.space)
        space.blocked = space.blocked or why

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _shape(node: Any) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if hasattr(meta, "shape") else None

    def _ndim(self, node: fx.Node) -> int:
        shape = self._shape(node)
        if shape is None:
            self._fail(node, "its value has no tensor shape")
        return len(shape)

    def _fail(self, node: fx.Node, why: str) -> NoReturn:
        if node.op == "call_module":
            what = f"module {node.target!r} ({type(self.modules[node.target]).__name__})"
        elif node.op == "call_method":
            what = f"method .{node.target}()"
        else:
            what = f"call to {getattr(node.target, '__module__', '')}.{getattr(node.target, '__name__', node.target)}"
        raise ValueError(f"fr.prune cannot analyse node {node.name!r}, {what}: {why}")

    def _reads(self, node: fx.Node, value: _Value) -> str:
        return f"it reads the units of {self._space(value.space).label}"

    def _param(self, module: str, name: str) -> str | None:
        return f"{module}.{name}" if getattr(self.modules[module], name, None) is not None else None

    # ------------------------------------------------------------------ the walk
    def _visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            self._input_dependent.add(node)
            return
        if any(a in self._input_dependent for a in node.all_input_nodes):
            self._input_dependent.add(node)
        if node.op == "get_attr":
            return
        tracked = [a for a in node.all_input_nodes if a in self._tracks]
        if node.op == "output":
            for a in tracked:
                self._block(self._tracks[a], "they reach the model's output")
            return
        if node.op == "call_module":
            self._module(node, self.modules[node.target], tracked)
        else:
            self._function(node, tracked)

    def _module(self, node: fx.Node, m: nn.Module, tracked: list[fx.Node]) -> None:
        name = node.target
        x = node.args[0] if node.args else None
        value = self._tracks.get(x) if isinstance(x, fx.Node) else None
        if isinstance(m, nn.MultiheadAttention):
            self._mha(node, m, tracked)
            return
        if value is None and tracked:
            self._fail(node, self._reads(node, self._tracks[tracked[0]]) + " through an argument other than its input")
        if isinstance(m, nn.Linear):
            if value is not None:
                if not (isinstance(value, _Track) and value.axis == self._ndim(x) - 1):
                    self._fail(node, self._reads(node, value) + " on a dim other than its last")
                self._space(value.space).readers.append(
                    Reader(name, "linear", f"{name}.weight", self._param(name, "bias"), x, value.axis))
            self._produce(node, name, m.out_features, self._ndim(node) - 1)
        elif isinstance(m, _CONVS):
            spatial = m.weight.ndim - 2
            if m.groups != 1:
                if value is not None:
                    self._block(value, f"the grouped convolution {name} reads them")
                return
            if value is not None:
                if not (isinstance(value, _Track) and value.block == 1
                        and value.axis == self._ndim(x) - spatial - 1):
                    self._fail(node, self._reads(node, value) + " on a dim other than its channels")
                pads = m.padding != "valid" and (m.padding == "same" or any(p > 0 for p in m.padding))
                self._space(value.space).readers.append(
                    Reader(name, "conv", f"{name}.weight", self._param(name, "bias"), x, value.axis,
                           zero_padding=pads and m.padding_mode == "zeros"))
            self._produce(node, name, m.out_channels, self._ndim(node) - spatial - 1)
        elif isinstance(m, _NORMS):
            if value is None:
                return
            if not (isinstance(value, _Track) and value.block == 1 and value.axis == 1):
                self._fail(node, self._reads(node, value) + " on a dim other than its channels")
            if not m.track_running_stats or m.running_mean is None:
                self._block(value, f"{name} normalizes them with batch statistics, not running ones")
            else:
                self._space(value.space).norms.append(Norm(
                    name, self._param(name, "weight"), self._param(name, "bias"),
                    f"{name}.running_mean", f"{name}.running_var"))
            self._tracks[node] = value
        elif isinstance(m, _MIXING_NORMS):
            if value is not None:
                self._block(value, f"{name} normalizes them together")
        elif isinstance(m, _ELEMENTWISE_MODULES) or (isinstance(m, nn.PReLU) and m.num_parameters == 1):
            if value is not None:
                self._tracks[node] = value
        elif isinstance(m, nn.Flatten):
            if value is not None:
                self._tracks[node] = self._reshape(node, x, value)
        elif type(m) in _POOL_MODULES:
            if value is not None:
                self._pool(node, x, value, _POOL_MODULES[type(m)])
        elif isinstance(m, nn.Softmax):
            if value is not None:
                self._softmax(node, x, value, m.dim)
        elif tracked:
            self._fail(node, self._reads(node, value) + "; fr.prune does not know this layer type")

    def _produce(self, node: fx.Node, module: str, size: int, axis: int) -> None:
        i = self._new(size)
        self._spaces[i].producers.append(Producer(module, f"{module}.weight", self._param(module, "bias")))
        self._tracks[node] = _Track(i, axis)

    def _mha(self, node: fx.Node, m: nn.MultiheadAttention, tracked: list[fx.Node]) -> None:
        name = node.target
        for a in tracked:
            self._block(self._tracks[a], f"nn.MultiheadAttention {name} reads them (its embed_dim is fixed)")
        why = None
        if not m._qkv_same_embed_dim:
            why = "separate q/k/v projection weights (kdim or vdim set)"
        elif m.bias_k is not None or m.add_zero_attn:
            why = "add_bias_kv or add_zero_attn"
        for user in node.users:
            if not (user.op == "call_function" and user.target is operator.getitem):
                self._fail(user, f"it uses the output of nn.MultiheadAttention {name} whole")
            if user.args[1] == 1 and user.users:
                why = "its attention weights are read"
        i = self._new(m.num_heads)
        space = self._spaces[i]
        space.mha, space.heads, space.blocked = name, True, why and f"{name} has {why}"
        space.readers.append(Reader(f"{name}.out_proj", "linear", f"{name}.out_proj.weight",
                                    self._param(f"{name}.out_proj", "bias"), None, -1))

    def _function(self, node: fx.Node, tracked: list[fx.Node]) -> None:
        target = node.target
        method = target if node.op == "call_method" else None
        if (node.op == "call_function" and target is getattr) or method in _SHAPE_METHODS:
            return  # shapes, dtypes, devices: no values flow
        if not tracked:
            return
        x = node.args[0]
        value = self._tracks.get(x) if isinstance(x, fx.Node) else None
        if target in _UNARY_FUNCTIONS or method in _UNARY_METHODS:
            if value is None:
                self._fail(node, self._reads(node, self._tracks[tracked[0]])
                           + " through an argument other than its input")
            self._tracks[node] = value
        elif target in _BINARY_FUNCTIONS or method in _BINARY_METHODS:
            self._binary(node)
        elif target in _RESHAPE_FUNCTIONS or method in _RESHAPE_METHODS:
            self._tracks[node] = self._reshape(node, x, self._only(node, value, tracked))
        elif target in (torch.transpose, torch.permute) or method in ("transpose", "permute"):
            self._permute(node, x, self._only(node, value, tracked))
        elif target is F.scaled_dot_product_attention:
            self._attention(node)
        elif target in _REDUCE_FUNCTIONS or method in _REDUCE_METHODS:
            self._reduce(node, x, self._only(node, value, tracked))
        elif target in _SOFTMAX or method in ("softmax", "log_softmax"):
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
            self._softmax(node, x, self._only(node, value, tracked), dim)
        elif target in _POOL_FUNCTIONS:
            self._pool(node, x, self._only(node, value, tracked), _POOL_FUNCTIONS[target])
        elif target in (F.layer_norm, F.group_norm, F.normalize):
            self._block(self._only(node, value, tracked), f"{node.name} normalizes them together")
        elif target is operator.getitem and value is not None:
            self._getitem(node, x, value)
        else:
            self._fail(node, self._reads(node, self._tracks[tracked[0]]) + "; fr.prune does not know this op")

    def _only(self, node: fx.Node, value: _Value | None, tracked: list[fx.Node]) -> _Value:
        if value is None or len(tracked) > 1:
            self._fail(node, self._reads(node, self._tracks[tracked[0]]) + " through an argument other than its input")
        assert value is not None
        return value

    def _binary(self, node: fx.Node) -> None:
        out = self._shape(node)
        operands = [a for a in node.args[:2]]
        values = [self._tracks.get(a) if isinstance(a, fx.Node) else None for a in operands]
        first = next(v for v in values if v is not None)
        if all(v is not None for v in values):
            a, b = values
            if (type(a) is not type(b) or replace(a, space=0) != replace(b, space=0)
                    or self._shape(operands[0]) != self._shape(operands[1])):
                self._fail(node, f"it combines the units of {self._space(a.space).label} and "
                                 f"{self._space(b.space).label} along different dims")
            root = self._union(a.space, b.space, node)
            self._tracks[node] = (_Track(root, a.axis, a.block) if isinstance(a, _Track)
                                  else _Heads(root, a.head_axis, a.inner_axis))
            return
        other = operands[1] if values[0] is not None else operands[0]
        if isinstance(other, fx.Node):
            shape = self._shape(other)
            axes = [first.axis] if isinstance(first, _Track) else [first.head_axis, first.inner_axis]
            if shape is None or other in self._input_dependent or any(
                    ax - (len(out) - len(shape)) >= 0 and shape[ax - (len(out) - len(shape))] != 1 for ax in axes):
                self._block(first, f"{node.name} combines them with {other.name!r}, a tensor that "
                                   "varies with the input or along the channels")
                return
        elif not isinstance(other, (int, float)):
            self._fail(node, self._reads(node, first) + f" together with a {type(other).__name__}")
        self._tracks[node] = first

    def _reshape(self, node: fx.Node, x: fx.Node, value: _Value) -> _Value:
        si, so = self._shape(x), self._shape(node)
        if si is None or so is None:
            self._fail(node, "its input or output has no tensor shape")
        if isinstance(value, _Heads):
            h, i = value.head_axis, value.inner_axis
            prefix = math.prod(si[:h])
            if i == h + 1 == len(si) - 1 and math.prod(so[:-1]) == prefix and so[-1] == si[h] * si[i]:
                if self._size_arg(node, len(so), len(so) - 1) != -1:
                    self._space(value.space).fixed_heads = True
                return _Track(value.space, len(so) - 1)
            self._fail(node, "it reshapes attention heads other than back into one dim")
        a, b = value.axis, value.block
        prefix, rest = math.prod(si[:a]), math.prod(si[a + 1:])
        js = [j for j in range(len(so)) if math.prod(so[:j]) == prefix]
        if not js:
            self._fail(node, "it reshapes the channels together with the dims before them")
        j = js[-1]
        inner = math.prod(so[j + 1:])
        if (b * rest) % inner == 0:
            return _Track(value.space, j, b * rest // inner)
        if b == 1 and rest == 1 and len(so) == j + 2:
            space = self._space(value.space)
            heads = so[j]
            if space.groups not in (None, heads):
                self._fail(node, f"it cuts {space.label} into {heads} heads, but they are cut into {space.groups}")
            space.groups, space.heads = heads, True
            if self._size_arg(node, len(so), j) != -1:
                space.fixed_heads = True
            return _Heads(value.space, j, j + 1)
        self._fail(node, "it splits the channels in a way fr.prune does not follow")

    @staticmethod
    def _size_arg(node: fx.Node, ndim: int, dim: int) -> Any:
        """What a view or reshape was asked for at ``dim`` of its output (-1: inferred)."""
        args = list(node.args[1:])
        if len(args) == 1 and isinstance(args[0], (list, tuple)):
            args = list(args[0])
        return args[dim] if node.op != "call_module" and len(args) == ndim else None

    def _permute(self, node: fx.Node, x: fx.Node, value: _Value) -> None:
        ndim = self._ndim(x)
        args = list(node.args[1:]) or list(node.kwargs.values())
        if node.target in ("transpose", torch.transpose):
            d0, d1 = (d % ndim for d in args[:2])
            perm = list(range(ndim))
            perm[d0], perm[d1] = d1, d0
        else:
            dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
            perm = [d % ndim for d in dims]
        if isinstance(value, _Track):
            self._tracks[node] = _Track(value.space, perm.index(value.axis), value.block)
        else:
            self._tracks[node] = _Heads(value.space, perm.index(value.head_axis), perm.index(value.inner_axis))

    def _attention(self, node: fx.Node) -> None:
        names = ("query", "key", "value")
        qkv = [node.args[i] if len(node.args) > i else node.kwargs.get(n) for i, n in enumerate(names)]
        values = [self._tracks.get(a) if isinstance(a, fx.Node) else None for a in qkv]
        rest = [a for a in node.all_input_nodes if a not in qkv and a in self._tracks]
        if rest or not all(isinstance(v, _Heads) for v in values):
            self._fail(node, "it reads tracked values other than q, k and v split into heads")
        for a, v in zip(qkv, values):
            ndim = self._ndim(a)
            if (v.head_axis, v.inner_axis) != (ndim - 3, ndim - 1):
                self._fail(node, "its q, k or v do not hold the heads on dim -3")
        root = self._union(values[0].space, values[1].space, node)
        root = self._union(root, values[2].space, node)
        ndim = self._ndim(node)
        self._tracks[node] = _Heads(root, ndim - 3, ndim - 1)

    def _reduce(self, node: fx.Node, x: fx.Node, value: _Value) -> None:
        ndim = self._ndim(x)
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        if not isinstance(value, _Track):
            self._fail(node, "it reduces attention heads")
        dims = None if dim is None else {d % ndim for d in (dim if isinstance(dim, (list, tuple)) else [dim])}
        if dims is None or value.axis in dims:
            self._block(value, f"{node.name} reduces over them")
            return
        if node.target in (torch.sum, "sum"):
            self._sized(value, node)
        shift = 0 if keepdim else sum(d < value.axis for d in dims)
        self._tracks[node] = _Track(value.space, value.axis - shift, value.block)

    def _sized(self, value: _Value, node: fx.Node) -> None:
        space = self._space(value.space)
        space.sized = space.sized or node.name

    def _softmax(self, node: fx.Node, x: fx.Node, value: _Value, dim: Any) -> None:
        ndim = self._ndim(x)
        axes = {value.axis} if isinstance(value, _Track) else {value.head_axis, value.inner_axis}
        if dim is None or dim % ndim in axes:
            self._block(value, f"{node.name} normalizes them together")
            return
        self._sized(value, node)  # a constant channel becomes 1/n, n the size of that dim
        self._tracks[node] = value

    def _pool(self, node: fx.Node, x: fx.Node, value: _Value, spatial: int) -> None:
        if not isinstance(value, _Track) or value.block != 1 or value.axis >= self._ndim(x) - spatial:
            self._fail(node, self._reads(node, value) + " and pools over their dim")
        if self._shape(node) is None:
            self._fail(node, "it returns pooling indices")
        self._tracks[node] = value

    def _getitem(self, node: fx.Node, x: fx.Node, value: _Value) -> None:
        index = node.args[1]
        index = index if isinstance(index, tuple) else (index,)
        axes = [value.axis] if isinstance(value, _Track) else [value.head_axis, value.inner_axis]
        if not all(isinstance(i, (int, slice)) for i in index):
            self._fail(node, self._reads(node, value) + " with an index other than ints and slices")
        for ax in axes:
            if ax < len(index) and index[ax] != slice(None):
                self._fail(node, self._reads(node, value) + " and indexes into their dim")
        new = [ax - sum(isinstance(i, int) for i in index[:ax]) for ax in axes]
        self._tracks[node] = (_Track(value.space, new[0], value.block) if isinstance(value, _Track)
                              else _Heads(value.space, *new))

    def _collect(self) -> list[Space]:
        spaces = []
        for i, space in enumerate(self._spaces):
            if self._find(i) != i or space.blocked is not None:
                continue
            if not space.readers:
                continue  # read by no layer: nothing downstream to slice, nothing to gain
            spaces.append(space)
        return spaces

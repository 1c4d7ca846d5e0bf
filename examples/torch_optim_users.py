"""funcreg in a classic ``nn.Module`` + ``torch.optim`` loop: three tutorial recipes, each
next to its funcreg replacement in the same loop.

Every PyTorch tutorial regularizes in one of three ways:

1. **L2 through the optimizer**: ``SGD(..., weight_decay=wd)``. funcreg: add the penalty's
   exact gradient to the module's own ``.grad`` tensors, in place,
   ``fr.l2.add_grad(grads, params, lam, donate=True)``. ``fr.l2`` is λ·Σw² (no ½), so
   λ = wd/2 gives torch.optim's update exactly; and ``where=`` keeps biases out without
   building parameter groups.
2. **L1 added to the loss**: ``loss + lam * sum(p.abs().sum())``. Autograd then adds a
   subgradient λ·sign(w), which makes weights oscillate around 0 but never *be* 0.
   funcreg: after ``optimizer.step()``, the proximal step
   ``fr.l1.prox(params, lam, lr, donate=True)`` soft-thresholds the weights in the
   module's own storage, so the weights that should be 0 are exactly 0 (proximal SGD).
3. **L1 through a backward hook**: ``p.register_post_accumulate_grad_hook`` adding
   λ·sign(p) to ``p.grad``. funcreg: the same gradient, in place and in one call over all
   parameters, ``fr.l1.add_grad(grads, params, lam, donate=True)``.

``params = {k: p.detach() for k, p in model.named_parameters()}`` shares the module's
storage, so donating it writes into the module (and ``grads = {k: p.grad ...}`` into
``.grad``). For each recipe the script prints the time per training step, the peak memory
the loop took beyond what was allocated before it, and the fraction of weight entries
(biases excluded) that are exactly zero at the end, and checks that recipe 1 and 3 and
their funcreg replacements give the same model.

    python examples/torch_optim_users.py [--steps 300] [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import funcreg as fr

LR, WD, LAM = 0.1, 1e-3, 1e-3


def make_data(device: torch.device, n: int = 2048, d: int = 64, classes: int = 10):
    """A classification problem in which 8 of the 64 input features carry the labels."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    w = torch.zeros(d, classes)
    w[:8] = torch.randn(8, classes, generator=g)
    y = (x @ w + 0.3 * torch.randn(n, classes, generator=g)).argmax(1)
    return x.to(device), y.to(device)


def make_model(device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10)).to(device)


class Peak:
    """Peak memory taken between ``start()`` and ``read()``: CUDA's allocator statistics,
    or on Linux the resident set's high-water mark (reset through /proc/self/clear_refs)."""

    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        elif os.path.exists("/proc/self/clear_refs"):
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base = self._status("VmRSS")

    def read(self) -> float | None:
        """Megabytes above the start, or None where this platform cannot tell."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        if not os.path.exists("/proc/self/status"):
            return None
        return (self._status("VmHWM") - self.base) / 2**20

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def train(recipe: str, base: nn.Module, data, steps: int, peak: Peak) -> tuple[nn.Module, float, float | None]:
    """Train a copy of ``base`` with one recipe; return it, ms per step and peak MB."""
    x, y = data
    model = copy.deepcopy(base)
    wd = WD if recipe == "L2: torch.optim weight_decay" else 0.0
    opt = torch.optim.SGD(model.parameters(), lr=LR, weight_decay=wd)
    # The module's own storage, as funcreg trees: writes into them are writes into the model.
    params = {k: p.detach() for k, p in model.named_parameters()}
    weights = fr.select.weights

    if recipe == "L1: backward hook":
        def add_sign(p: torch.Tensor) -> None:
            p.grad.add_(torch.sign(p.detach()), alpha=LAM)

        for p in model.parameters():
            if p.ndim >= 2:
                p.register_post_accumulate_grad_hook(add_sign)

    def step() -> None:
        opt.zero_grad(set_to_none=False)  # .grad keeps its storage: funcreg may write into it
        loss = F.cross_entropy(model(x), y)
        if recipe == "L1: in the loss":
            loss = loss + LAM * sum(p.abs().sum() for p in model.parameters() if p.ndim >= 2)
        loss.backward()
        grads = {k: p.grad for k, p in model.named_parameters()}
        if recipe == "L2: fr.l2.add_grad":
            # torch.optim's weight_decay=wd is the gradient of (wd/2)·Σw²: fr.l2 with λ = wd/2
            fr.l2.add_grad(grads, params, WD / 2, donate=True)
        elif recipe == "L1: fr.l1.add_grad":
            fr.l1.add_grad(grads, params, LAM, where=weights, donate=True)
        opt.step()
        if recipe == "L1: fr.l1.prox after step":
            with torch.no_grad():
                fr.l1.prox(params, LAM, LR, where=weights, donate=True)

    step()  # warm up (allocates .grad) outside the timed, measured loop
    peak.start()
    start = time.perf_counter()
    for _ in range(steps - 1):
        step()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - start) / max(steps - 1, 1) * 1e3
    return model, ms, peak.read()


def zero_fraction(model: nn.Module) -> float:
    ws = [p for p in model.parameters() if p.ndim >= 2]
    return sum(int((p == 0).sum()) for p in ws) / sum(p.numel() for p in ws)


def max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


RECIPES: list[tuple[str, str]] = [
    ("L2: torch.optim weight_decay", "tutorial"),
    ("L2: fr.l2.add_grad", "funcreg, donate=True on .grad"),
    ("L1: in the loss", "tutorial"),
    ("L1: fr.l1.prox after step", "funcreg, donate=True on the module"),
    ("L1: backward hook", "tutorial"),
    ("L1: fr.l1.add_grad", "funcreg, donate=True on .grad"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    data = make_data(device)
    base = make_model(device)
    peak = Peak(device)
    print(f"device: {device}; MLP 64-256-256-10 ({sum(p.numel() for p in base.parameters()):,} "
          f"parameters), full batch of {len(data[0])}, SGD lr={LR}, {args.steps} steps; "
          f"λ = {LAM:g} for L1, weight_decay = {WD:g} for L2\n")
    print(f"{'recipe':<32}{'how':<38}{'ms/step':>9}{'peak MB':>9}{'exact zeros':>13}")
    models: dict[str, nn.Module] = {}
    for recipe, how in RECIPES:
        model, ms, mb = train(recipe, base, data, args.steps, peak)
        models[recipe] = model
        mb_text = "n/a" if mb is None else f"{mb:.1f}"
        print(f"{recipe:<32}{how:<38}{ms:9.2f}{mb_text:>9}{100 * zero_fraction(model):12.1f}%")
    same: Callable[[str, str], float] = lambda a, b: max_diff(models[a], models[b])  # noqa: E731
    print(f"\nweight_decay={WD:g} vs fr.l2.add_grad(λ={WD / 2:g}): max |Δw| = "
          f"{same('L2: torch.optim weight_decay', 'L2: fr.l2.add_grad'):.2e}")
    print(f"backward hook vs fr.l1.add_grad: max |Δw| = "
          f"{same('L1: backward hook', 'L1: fr.l1.add_grad'):.2e}")
    print("Only the proximal step gives exact zeros: a subgradient λ·sign(w), from the loss, "
          "a hook or add_grad, only makes small weights oscillate around 0.")


if __name__ == "__main__":
    main()

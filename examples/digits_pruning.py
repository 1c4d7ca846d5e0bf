"""Pruning pixels and hidden units of an MLP on scikit-learn's digits with ``fr.path``:
a grid of λ, 3-fold cross-validation, and the one-standard-error rule.

The data are scikit-learn's bundled 8x8 digits (1797 images, 10 classes; no download),
split once with a fixed seed into 1000 training images and 797 test images, each pixel
standardized with the training mean and standard deviation. Every member is the same
64-16-10 tanh MLP from the same initial weights, trained full batch with its own λ:

    F_λ(w) = cross-entropy(w)  +  λ (Σ_j √16·‖W₁[:, j]‖₂  +  Σ_u √10·‖W₂[:, u]‖₂)

``fr.group_lasso(params, λ, dim=1)`` on the two weight matrices: an all-zero column of W₁
(16, 64) is an input pixel the network no longer reads, an all-zero column of W₂ (10, 16)
a hidden unit it no longer uses. The pruned network is a dense (P, U) MLP with
U·(P + 1) + 10·(U + 1) parameters, P pixels and U units kept, against 1210 for the full
one. Penalizing both layers also fixes the scale a penalty on one layer alone would leave
free (the other layer could grow to undo the shrinkage).

``fr.path`` finds the grid for this network (the λ_max at w = 0 is useless here: with
W₂ = 0 the gradient on W₁ is 0), trains every (fold, λ) member and the refit on all of
the training images in one vmap, and reports the validation error over the folds with
its standard error. The rule is glmnet's ``lambda.1se``: the largest λ whose error is
within one standard error of the lowest, the smallest network that the folds cannot tell
from the best. The test images are used only to report the chosen member's accuracy.

    python examples/digits_pruning.py [--members 10] [--folds 3] [--plot digits_pruning.png]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.func import functional_call

import funcreg as fr


def load_digits_split(device: torch.device, n_train: int = 1000):
    """Images 0-999 of a fixed shuffle train (the first n_train of them are used), the
    other 797 test."""
    from sklearn.datasets import load_digits

    x, y = (torch.from_numpy(a) for a in load_digits(return_X_y=True))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order].float().to(device), y[order].to(device)
    mean, std = x[:n_train].mean(0), x[:n_train].std(0)
    x = (x - mean) / torch.where(std > 0, std, 1.0)  # pixels blank in every training image stay 0
    return (x[:n_train], y[:n_train]), (x[1000:], y[1000:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--members", type=int, default=8, help="number of λ values")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--rtol", type=float, default=1e-4, help="convergence tolerance of fr.path")
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--plot", default="digits_pruning.png", help="PNG path ('' to skip)")
    args = parser.parse_args()
    device, H = torch.device(args.device), args.hidden
    torch.set_num_threads(1)  # small matmuls gain little from a second thread; one fixes the sum order
    torch.manual_seed(0)
    (x, y), (x_test, y_test) = load_digits_split(device, args.n_train)
    model = nn.Sequential(nn.Linear(64, H), nn.Tanh(), nn.Linear(H, 10)).to(device)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def cross_entropy(p, x, y):  # F.cross_entropy's value; torch's CPU log_softmax is slow on 10 classes
        logits = functional_call(model, p, (x,))
        return (logits.logsumexp(-1) - logits.gather(-1, y[:, None]).squeeze(-1)).mean()

    def error(p, x, y):
        return (functional_call(model, p, (x,)).argmax(-1) != y).float().mean()

    print(f"device {device}, 1 thread; digits: {len(x)} train, {len(x_test)} test images; "
          f"{args.members} λ × ({args.folds} folds + refit)")
    res = fr.path(cross_entropy, params, fr.group_lasso, (x, y), where=fr.select.only(r"^[02]\.weight$"),
                  dim=1, n=args.members, folds=args.folds, metric=error, rtol=args.rtol)
    kept = res.group_norms != 0  # (members, 64 pixel columns of W₁ + H unit columns of W₂)
    pixels, units = kept[:, :64].sum(1).tolist(), kept[:, 64:].sum(1).tolist()
    n_params = [u * (p + 1) + 10 * (u + 1) for p, u in zip(pixels, units)]
    full = H * 65 + 10 * (H + 1)
    chosen, best = res.best("1se"), res.best("min")
    test_err = [float(error(res.member(k), x_test, y_test)) for k in range(len(res))]

    print(f"grid: {res.grid.note}\n")
    print(f"{'lambda':>9} {'train':>6} {'val':>6} {'± se':>5} {'pixels':>6} {'units':>5} {'params':>6}  converged")
    for k in range(len(res)):
        conv = f"at step {int(res.steps[k])}" if res.steps[k] else "no"
        mark = "  <- chosen (1se)" if k == chosen else ("  <- min" if k == best else "")
        print(f"{res.lambdas[k]:9.2e} {1 - res.train_loss[k]:6.1%} {1 - res.val_loss[k]:6.1%} "
              f"{res.val_se[k]:5.1%} {pixels[k]:6d} {units[k]:5d} {n_params[k]:6d}  {conv}{mark}")
    n_conv = int((res.steps > 0).sum())
    print(f"\n{n_conv}/{len(res)} refit members converged, {int((res.fold_steps > 0).sum())}/"
          f"{res.fold_steps.numel()} fold members (rtol {res.rtol:g}); train and val: accuracy, "
          f"val the mean over {args.folds} folds")
    print(f"pixels and units: how many the network still reads and uses (of 64 and {H}); "
          f"params: those of the pruned dense MLP (of {full})")
    print(f"chosen lambda {res.lambdas[chosen]:.2e} (largest within one SE of the best validation "
          f"accuracy): {pixels[chosen]} pixels, {units[chosen]} units, {n_params[chosen]} of {full} "
          f"parameters, test accuracy {1 - test_err[chosen]:.1%} (the min rule's: {1 - test_err[best]:.1%})")
    print(f"trained in {res.seconds:.1f} s")
    if args.plot:
        try:
            res.plot(args.plot, rule="1se")
            print(f"wrote {args.plot}")
        except ImportError as error_:
            print(f"{error_}: no plot")


if __name__ == "__main__":
    main()

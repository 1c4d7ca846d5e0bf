"""The picture of a regularization path: group norms along λ, and the losses with the
chosen λ marked. matplotlib is an optional extra, imported only here."""

from __future__ import annotations

from typing import Any


def plot(res: Any, path: str, rule: str | None, mine: int | None = None) -> None:
    """Write ``res`` (a :class:`fr.Path`) as a PNG to ``path``; see ``Path.plot``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError as error:
        raise ImportError("Path.plot needs matplotlib, an optional extra: "
                          "pip install matplotlib (or funcreg[examples])") from error
    if rule is None and res.val_loss is not None:
        rule = "1se" if res.val_se is not None else "min"
    chosen = res.best(rule) if rule is not None else None
    lams = res.lambdas.cpu().double()
    norms = res.group_norms.cpu()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    many = norms.shape[1] > 40
    for j in range(norms.shape[1]):
        top.plot(lams, norms[:, j], lw=0.6 if many else 1.2, alpha=0.6 if many else 1.0)
    top.set_ylabel(f"group norm ({res.unit})")
    top.set_title(f"{res.penalty}: the regularization path")
    bottom.plot(lams, res.train_loss.cpu(), marker=".", label="train")
    if res.val_loss is not None:
        val = res.val_loss.cpu().double()
        if res.val_se is not None:
            se = res.val_se.cpu().double()
            bottom.errorbar(lams, val, yerr=se, marker=".", capsize=2, label="validation (±1 se over folds)")
        else:
            bottom.plot(lams, val, marker=".", label="validation")
    bottom.set_xscale("log")
    if bool((res.train_loss > 0).all()) and (res.val_loss is None or bool((res.val_loss > 0).all())):
        bottom.set_yscale("log")
    bottom.set_xlabel("λ")
    bottom.set_ylabel("metric")
    kept = bottom.twinx()
    kept.step(lams, res.kept.cpu(), where="mid", color="0.4", ls=":", label="groups kept")
    kept.set_ylabel("groups kept")
    kept.set_ylim(0, res.groups * 1.05 + 0.5)
    kept.yaxis.set_major_locator(MaxNLocator(integer=True))
    if chosen is not None:
        for ax in (top, bottom):
            ax.axvline(float(lams[chosen]), color="0.5" if mine is not None else "k",
                       ls="-." if mine is not None else "--", lw=1)
        bottom.plot([], [], color="0.5" if mine is not None else "k", ls="-." if mine is not None else "--", lw=1,
                    label=f"{rule} rule: λ = {float(lams[chosen]):.3g}")
    if mine is not None:
        for ax in (top, bottom):
            ax.axvline(float(lams[mine]), color="k", ls="--", lw=1)
        bottom.plot([], [], color="k", ls="--", lw=1, label=f"chosen: λ = {float(lams[mine]):.3g}")
    handles, labels = bottom.get_legend_handles_labels()
    h2, l2 = kept.get_legend_handles_labels()
    bottom.legend(handles + h2, labels + l2, fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

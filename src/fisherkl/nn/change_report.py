"""The "what changes cost" section of ``fisherkl report --network``: on the digits MLP, a pruning curve
(magnitude, OBD, OBS with KFAC; predicted ½δᵀFδ under KFAC beside the exact KL) and the per-layer
quantisation sensitivity at 8/4/3 bits (predicted under the diagonal and KFAC Fishers beside the exact KL)."""

from __future__ import annotations

import io
from typing import Any

from .digits import digits_mlp, load_digits_split, train_classifier
from .fisher import fisher
from .prune import pruning_curve
from .quantize import quantization_sensitivity

SPARSITIES = (0.1, 0.3, 0.5, 0.7, 0.9)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def change_cost_section(plots: bool = True, n_examples: int = 600) -> tuple[str, list[tuple[str, str, bytes]]]:
    """(text, [(stem, caption, png)]) of the section; trains the digits MLP for 10 epochs (seeded)."""
    (x, y), _ = load_digits_split(seed=0)
    net = digits_mlp(seed=0)
    train_classifier(net, x, y, epochs=10)
    net.eval()
    data = (x[:n_examples], y[:n_examples])
    mats = {"diag": fisher(net, data, representation="diag"), "kfac": fisher(net, data, representation="kfac")}
    curves: dict[str, tuple[list[float | None], list[float | None]]] = {}
    lines = [
        f"Pruning the weights (global; no retraining), on {n_examples} training digits: predicted ½δᵀFδ (KFAC) "
        "and exact mean KL (nats)",
        f"{'sparsity':<10}" + "".join(f"{m + ' pred':>16}{m + ' exact':>16}" for m in ("magnitude", "OBD", "OBS")),
    ]
    runs = (("magnitude", None, "magnitude"), ("OBD", mats["diag"], "obd"), ("OBS", mats["kfac"], "obs"))
    for label, f, method in runs:
        res = pruning_curve(net, f, SPARSITIES, method, data=data)
        curves[label] = ([0.5 * float(mats["kfac"].quad(r.delta)) for r in res], [r.exact for r in res])
    for i, s in enumerate(SPARSITIES):
        row = f"{s:<10.0%}"
        for label, _, _ in runs:
            pred, exact = curves[label][0][i], curves[label][1][i]
            row += f"{pred:>16.3g}{exact:>16.3g}"
        lines.append(row)
    sens = quantization_sensitivity(net, mats, data, bits=(8, 4, 3))
    lines += ["", sens.to_text()]
    images: list[tuple[str, str, bytes]] = []
    if plots:
        from .change_plots import pruning_plot, sensitivity_plot

        fig = pruning_plot(SPARSITIES, curves, None, "digits MLP: pruning, predicted (KFAC) vs exact KL")
        images.append(("change-pruning", "Pruning: predicted ½δᵀFδ (dashed) vs exact KL (solid)", _png(fig)))
        images.append(
            (
                "change-quantisation",
                "Quantising one layer alone: predicted vs exact KL per layer",
                _png(sensitivity_plot(sens)),
            )
        )
    return "\n".join(lines), images


__all__ = ["change_cost_section"]

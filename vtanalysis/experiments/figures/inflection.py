"""Inflection layers of the cross-modal attention shift (AdaptInfer)."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt

from ..context import Context, save, write_json
from ..registry import figure
from ..findings import MIN_SEGMENT
from ..statistics import inflection_result


@figure(statistics=inflection_result)
def inflection(ctx: Context) -> list[Path]:
    """Attention-shift curves over the layers and their change points, with the AdaptInfer schedules they imply."""
    result = inflection_result(ctx)
    curves, every, control = result["curves"], result["inflections"], result.get("control")
    found = [c for c in every if not c.get("in_control")]  # a change point the control shares is not a finding
    titles = {"image_mass": "image attention mass of the last token", "js": "JS divergence, layer l-1 -> l",
              "topk_overlap": "top-10% overlap, layer l-1 -> l"}
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6), gridspec_kw={"width_ratios": [1, 1, 1, 0.8]})
    for ax, (name, title) in zip(axes, titles.items()):
        # a layer-to-layer curve has no value at the first layer (the collector stores a placeholder there)
        first = 0 if name == "image_mass" else 1
        ax.plot(curves["layers"][first:], curves[name][first:], "o-", ms=3, label=ctx.vlm.name)
        top = max(curves[name])
        if control:
            ax.plot(control["curves"]["layers"][first:], control["curves"][name][first:], "s:", ms=2.5,
                    color="grey", label=f"control: {control['name']}")
            top = max(top, max(control["curves"][name]))
            for c in control["inflections"]:
                ax.axvline(c["layer"], color="grey", ls=":", lw=1)
        ax.set_ylim(0, 1.05 if name != "js" else top * 1.15 or 1)  # from 0: small wiggles stay small
        for c in every:
            shared = c.get("in_control")
            ax.axvline(c["layer"], color="darkorange" if shared else "crimson", ls="--", lw=1)
            ax.text(c["layer"], ax.get_ylim()[1], f" {c['layer']:.0f} ({c['confidence']:.2f})"
                    + (" = control's" if shared else ""), color="darkorange" if shared else "crimson",
                    fontsize=7, va="top", rotation=90 if shared else 0)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_title(title, fontsize=10)
    if found:
        lines = ["AdaptInfer schedules implied", "(prune after each inflection layer):", ""]
        for keep, sched in result["schedules"].items():
            lines.append(f"keep {keep} (budget {result['budgets'][keep]} of {result['n_image_tokens']}):")
            lines.append(f"  {sched['error'][:60]}..." if "error" in sched else
                         "  " + ", ".join(f"from layer {a}: {c}" for a, c in zip(sched["layers"], sched["counts"])))
    elif every:  # only change points the control shares
        lines = ["every change point found is within one", "layer of one of the control's", f"({control['name']}): "
                 "how the model was made,", "not what it learned; no schedule follows"]
    elif ctx.vlm.num_layers - 1 < 2 * MIN_SEGMENT:  # as findings.md says: too shallow to test
        lines = [f"not testable: {ctx.vlm.num_layers} decoder layers give", f"{ctx.vlm.num_layers - 1} layer-to-layer "
                 f"points, fewer than", f"the {2 * MIN_SEGMENT} a change point needs"]
    else:
        lines = ["no inflection layer detected:", "no AdaptInfer schedule follows", "(use a single-stage method)"]
    if control:
        axes[0].legend(fontsize=7, loc="lower right")
    axes[3].axis("off")
    axes[3].text(0, 1, "\n".join(lines), va="top", fontsize=7.5, family="monospace", transform=axes[3].transAxes)
    marks = "dashed: inflection layers (confidence)" if found else "no inflection layer detected"
    if control:
        marks += "; orange: shared with the control (grey, dotted)"
    fig.suptitle(f"{ctx.vlm.name}: cross-modal attention shift, mean over n = {result['samples']} samples; {marks}",
                 fontsize=10)
    paths = save(fig, ctx.out, "inflection")
    paths.append(write_json(ctx.out / "inflection.json", result))
    return paths

"""The report's PNGs (matplotlib, headless): perplexity vs eval length, training loss, row mass, q/k grad norms."""

from pathlib import Path

from sa_megatron.training.metrics import QK_GRAD_NORM_PREFIX, ROW_MASS_PREFIX

COLORS = {"softmax": "tab:blue", "sa": "tab:red", "sa_raw": "tab:green"}
STYLES = ["-", "--", ":", "-."]  # per seed in the loss plot, per position encoding in the per-layer ones


def write_plots(study_dir: Path, results, cells) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    written = []
    evaluated = [r for r in results if r.diverged is None]
    encodings = sorted({r.position_encoding for r in results})
    if evaluated:
        written.append(_ppl_vs_length(plt, study_dir, cells, sorted({pe for (_, pe, _) in cells})))
    if any(r.losses for r in results):
        written.append(_loss_curves(plt, study_dir, results, encodings))
    for prefix, name, label in ((ROW_MASS_PREFIX, "row_mass.png", "mean attention row mass Σ_j w_ij"),
                                (QK_GRAD_NORM_PREFIX, "qk_grad_norm.png", "gradient norm")):
        if any(tag.startswith(prefix) for r in results for tag in r.scalars):
            written.append(_per_layer(plt, study_dir, results, encodings, prefix, name, label))
    return written


def _ppl_vs_length(plt, study_dir, cells, encodings) -> str:
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    from sa_megatron.study.results import mean_std

    modes = [m for m in ("whole", "last") if any(key[0] == m for key in cells)]
    fig, axes = plt.subplots(len(modes), len(encodings), figsize=(4.5 * len(encodings), 3.6 * len(modes)),
                             squeeze=False, sharey="row")
    for row, mode in enumerate(modes):
        for ax, pe in zip(axes[row], encodings):
            for (cell_mode, cell_pe, variant), by_length in sorted(cells.items()):
                if (cell_mode, cell_pe) != (mode, pe):
                    continue
                lengths = sorted(by_length)
                stats = [mean_std(by_length[L]) for L in lengths]
                ax.errorbar(lengths, [m for m, _ in stats], yerr=[s or 0 for _, s in stats], capsize=3,
                            color=COLORS.get(variant), marker="o", ms=3, label=variant)
            ax.set_xscale("log", base=2)
            ax.set_xticks(lengths, [str(L) for L in lengths])
            ax.xaxis.set_minor_formatter(NullFormatter())
            low, high = ax.get_ylim()
            if high > 5 * max(low, 1e-9):  # a blow-up past the training length: log scale keeps the rest readable
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.set(title=f"{pe}, {'whole window' if mode == 'whole' else 'last K tokens'}",
                   xlabel="eval length (tokens)")
            ax.grid(alpha=0.3)
        axes[row][0].set_ylabel("held-out perplexity\n(mean ± std over seeds)")
    axes[0][-1].legend(fontsize=8)
    return _save(plt, fig, study_dir, "ppl_vs_length.png")


def _loss_curves(plt, study_dir, results, encodings) -> str:
    seeds = sorted({r.seed for r in results})
    fig, axes = plt.subplots(1, len(encodings), figsize=(4.5 * len(encodings), 3.5), squeeze=False, sharey=True)
    for ax, pe in zip(axes[0], encodings):
        for r in results:
            if r.position_encoding == pe and r.losses:
                steps = list(r.losses)
                ax.plot(steps, _smooth(list(r.losses.values())), color=COLORS.get(r.attention), lw=1,
                        linestyle=STYLES[seeds.index(r.seed) % len(STYLES)], label=f"{r.attention} s{r.seed}")
        ax.set(title=pe, xlabel="step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss (moving average of 10 steps)")
    axes[0][-1].legend(fontsize=7)
    return _save(plt, fig, study_dir, "training_loss.png")


def _per_layer(plt, study_dir, results, encodings, prefix, name, label) -> str:
    tags = sorted({tag for r in results for tag in r.scalars if tag.startswith(prefix)},
                  key=lambda t: (t.split("/")[-2], int(t.rsplit("_", 1)[1])))
    kinds = sorted({tag.split("/")[-2] for tag in tags})  # row_mass, or key and query
    layers = sorted({int(tag.rsplit("_", 1)[1]) for tag in tags})
    fig, axes = plt.subplots(len(kinds), len(layers), figsize=(3.6 * len(layers), 3 * len(kinds)), squeeze=False)
    for row, kind in enumerate(kinds):
        for col, layer in enumerate(layers):
            ax = axes[row][col]
            tag = f"{prefix}{kind}/layer_{layer}" if prefix == QK_GRAD_NORM_PREFIX else f"{prefix}layer_{layer}"
            for r in results:
                points = r.scalars.get(tag, [])
                if points:
                    style = STYLES[encodings.index(r.position_encoding) % len(STYLES)]
                    ax.plot([s for s, _ in points], [v for _, v in points], color=COLORS.get(r.attention),
                            linestyle=style, lw=1, label=f"{r.attention} {r.position_encoding} s{r.seed}")
            ax.set(title=f"{kind} layer {layer}", xlabel="step")
            if prefix == QK_GRAD_NORM_PREFIX:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
        axes[row][0].set_ylabel(label)
    axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1))  # beside the panels, not on them
    return _save(plt, fig, study_dir, name)


def _smooth(values, window: int = 10):
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def _save(plt, fig, study_dir, name) -> str:
    fig.tight_layout()
    fig.savefig(Path(study_dir) / name, dpi=110)
    plt.close(fig)
    return name

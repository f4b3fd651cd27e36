"""report.md: perplexity tables (mean ± std over seeds, best per column in bold), the relative change of sa and
sa_raw against softmax, the plots, and a "what this shows" paragraph written from the same numbers."""

from collections import defaultdict
from datetime import datetime, timezone

from sa_megatron.data.atomic import write_bytes_atomic
from sa_megatron.study.results import collect, mean_std
from sa_megatron.study.spec import Study

VARIANTS = ("softmax", "sa", "sa_raw")
MODES = {"whole": "whole window (every position scored)", "last": "last K tokens of each window"}


def write_report(study: Study) -> str:
    from sa_megatron.study.plots import write_plots

    results, missing = collect(study)
    evaluated = [r for r in results if r.diverged is None]
    cells = _cells(evaluated)
    plots = write_plots(study.study_dir, results, cells)
    lines = [f"# Study `{study.name}`", "", _preamble(study, results, evaluated, missing), ""]
    if evaluated:
        lengths = sorted(next(iter(evaluated)).ppl["whole"])
        k = study.eval.score_last or lengths[0]
        for mode, title in MODES.items():
            lines += [f"## Perplexity, {title.replace('K', str(k))}", "", *_table(cells, mode, lengths), "",
                      *_relative_table(cells, mode, lengths), ""]
        lines += ["## What this shows", "", _findings(cells, lengths, evaluated), ""]
    diverged = [r for r in results if r.diverged]
    if diverged:
        lines += ["## Diverged runs", "", *[f"- `{r.name}`: {r.diverged}" for r in diverged], ""]
    lines += ["## Plots", "", *[f"![{name}]({name})" for name in plots], ""]
    text = "\n".join(lines)
    write_bytes_atomic(study.study_dir / "report.md", text.encode())
    return text


def _cells(evaluated) -> dict:
    """(mode, position encoding, variant) → {length: [ppl per seed]}."""
    cells = defaultdict(lambda: defaultdict(list))
    for r in evaluated:
        for mode, by_length in r.ppl.items():
            for length, ppl in by_length.items():
                cells[(mode, r.position_encoding, r.attention)][length].append(ppl)
    return cells


def _groups(cells, mode):
    encodings = sorted({pe for (m, pe, _) in cells if m == mode})
    return [(pe, [v for v in VARIANTS if (mode, pe, v) in cells]) for pe in encodings]


def _preamble(study, results, evaluated, missing) -> str:
    runs = len(study.runs)
    seeds = sorted({r.seed for r in evaluated})
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    m, t = study.base["model"], study.base["training"]
    held_out = study.corpus.held_out.name if study.corpus else study.eval.data
    tokens = f"the first {study.eval.eval_tokens:,} tokens" if study.eval.eval_tokens else "all tokens"
    text = (f"Written {when} by `sa-megatron study {study.path}` from {len(results)} of {runs} runs "
            f"({len(evaluated)} evaluated, seeds {seeds}). Every run trains the same data for the same steps with "
            f"the same hyperparameters; only the grid ({', '.join(k for k, _ in study.grid)}) varies: "
            f"{m['num_layers']} layers, width {m['hidden_size']}, {m['num_attention_heads']} heads, training length "
            f"{m['seq_length']}, {t['train_iters']} steps of {t['global_batch_size']} sequences. Perplexity is "
            f"measured on {tokens} of held-out text no run trained on ({held_out}), at multiples of the training "
            "length, in non-overlapping windows (`sa-megatron eval`'s code).")
    if missing:
        text += (f"\n\n**Partial report: {len(missing)} of {runs} runs have not finished** "
                 f"({', '.join(missing)}); run the study again to finish them.")
    return text


def _table(cells, mode, lengths) -> list[str]:
    rows = ["| PE | attention | " + " | ".join(f"{L}" for L in lengths) + " |",
            "|---|---|" + "---:|" * len(lengths)]
    for pe, variants in _groups(cells, mode):
        best = {L: min(mean_std(cells[(mode, pe, v)][L])[0] for v in variants) for L in lengths}
        for v in variants:
            entries = []
            for L in lengths:
                mean, std = mean_std(cells[(mode, pe, v)][L])
                entry = f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")
                entries.append(f"**{entry}**" if mean == best[L] and len(variants) > 1 else entry)
            rows.append(f"| {pe} | {v} | " + " | ".join(entries) + " |")
    return rows + ["", "Mean ± std over seeds; **bold**: the best attention variant for that PE and length."]


def _relative(cells, mode, pe, variant, length) -> float:
    return mean_std(cells[(mode, pe, variant)][length])[0] / mean_std(cells[(mode, pe, "softmax")][length])[0] - 1


def _relative_table(cells, mode, lengths) -> list[str]:
    rows = ["| PE | vs softmax | " + " | ".join(f"{L}" for L in lengths) + " |", "|---|---|" + "---:|" * len(lengths)]
    for pe, variants in _groups(cells, mode):
        for v in variants:
            if v != "softmax" and "softmax" in variants:
                changes = [f"{100 * _relative(cells, mode, pe, v, L):+.1f}%" for L in lengths]
                rows.append(f"| {pe} | {v} | " + " | ".join(changes) + " |")
    if len(rows) == 2:
        return []
    return rows + ["", "Relative change of mean perplexity against softmax with the same PE (negative = better)."]


def _findings(cells, lengths, evaluated) -> str:
    """Who wins where, whether gaps exceed the seed spread, and how that sits with the paper's claim."""
    first, last = lengths[0], lengths[-1]
    sentences, gain_short, gain_long = [], {}, {}
    for pe, variants in _groups(cells, "whole"):
        means = {L: {v: mean_std(cells[("whole", pe, v)][L])[0] for v in variants} for L in lengths}
        winners = {L: min(means[L], key=means[L].get) for L in (first, last)}
        sentence = (f"With {pe}, {winners[first]} is best at the training length {first} "
                    f"(ppl {means[first][winners[first]]:.2f}) and {winners[last]} at {last} "
                    f"(ppl {means[last][winners[last]]:.2f})")
        for v in ("sa", "sa_raw"):
            if "softmax" in variants and v in variants:
                sentence += (f"; {v} vs softmax {100 * _relative(cells, 'whole', pe, v, first):+.1f}% at {first}, "
                             f"{100 * _relative(cells, 'whole', pe, v, last):+.1f}% at {last}")
        if "softmax" in variants and "sa" in variants:
            gain_short[pe] = -_relative(cells, "whole", pe, "sa", first)
            gain_long[pe] = -_relative(cells, "whole", pe, "sa", last)
        sentences.append(sentence + ".")
    if not gain_short:
        return " ".join(sentences)
    whole, last_k = _sa_vs_softmax(cells, "whole", lengths), _sa_vs_softmax(cells, "last", lengths)
    sentences.append(f"Over all PEs and lengths, sa has a lower mean perplexity than softmax in {whole['wins']} of "
                     f"{whole['cells']} cells with whole-window scoring and in {last_k['wins']} of {last_k['cells']} "
                     "with last-K scoring.")
    if whole["beyond_spread"] is None:
        sentences.append("With one seed per configuration the seed spread is unknown, so no gap here can be told "
                         "apart from seed noise.")
    else:
        sentences.append(f"The sa–softmax gap exceeds the sum of the two seed standard deviations in "
                         f"{whole['beyond_spread']} of {whole['cells']} whole-window cells.")
    mean_short, mean_long = sum(gain_short.values()) / len(gain_short), sum(gain_long.values()) / len(gain_long)
    better = whole["wins"] > whole["cells"] / 2
    resolved = whole["beyond_spread"] is not None and whole["beyond_spread"] > whole["cells"] / 2
    change = {pe: 100 * (gain_long[pe] - gain_short[pe]) for pe in gain_short}
    grows = sorted(pe for pe, points in change.items() if points > 0)
    by_pe = ", ".join(f"{pe} {points:+.1f} points" for pe, points in sorted(change.items()))
    verdict = ("agrees" if len(grows) == len(change) else "disagrees" if not grows
               else f"partly agrees (it grows with {', '.join(grows)} only)")
    sentences.append(
        f"The paper claims SA beats softmax, most clearly past the training length. Here sa's gain over softmax "
        f"(perplexity reduction, averaged over PEs) is {100 * mean_short:+.1f}% at {first} tokens and "
        f"{100 * mean_long:+.1f}% at {last}: the result {'agrees' if better else 'disagrees'} that sa is better"
        f"{'' if resolved else ' (but most gaps are within seed noise, or the spread is unknown)'}, and {verdict} "
        f"that the gain grows past the training length (change of the gain from {first} to {last}: {by_pe}).")
    sentences.append(_final_losses(evaluated))
    return " ".join(sentences)


def _sa_vs_softmax(cells, mode, lengths) -> dict:
    """Cells where sa's mean beats softmax's, and where the gap exceeds std_sa + std_softmax (None: one seed)."""
    wins = compared = beyond = 0
    spread_known = True
    for pe, variants in _groups(cells, mode):
        if "softmax" not in variants or "sa" not in variants:
            continue
        for L in lengths:
            (sa, sa_std), (soft, soft_std) = (mean_std(cells[(mode, pe, v)][L]) for v in ("sa", "softmax"))
            compared += 1
            wins += sa < soft
            if sa_std is None or soft_std is None:
                spread_known = False
            else:
                beyond += abs(sa - soft) > sa_std + soft_std
    return {"wins": wins, "cells": compared, "beyond_spread": beyond if spread_known else None}


def _final_losses(evaluated) -> str:
    """Mean training loss over each run's last 10 steps, averaged per attention variant."""
    finals = defaultdict(list)
    for r in evaluated:
        if r.losses:
            last = list(r.losses.values())[-10:]
            finals[r.attention].append(sum(last) / len(last))
    parts = [f"{v} {sum(finals[v]) / len(finals[v]):.3f}" for v in VARIANTS if finals[v]]
    return f"Final training loss (last 10 steps, mean over runs): {', '.join(parts)}." if parts else ""

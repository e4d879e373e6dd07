"""The run report: one self-contained HTML page (plots embedded as PNG data URIs, inline CSS, no JavaScript, no
external resources) and the same tables as Markdown for a terminal.

Model outputs, prompts and names are hostile text: in HTML every string from `data` passes through html.escape, and a
Content-Security-Policy forbids scripts and remote loads even if something slipped through; in Markdown they are
backslash-escaped so that raw HTML, links and table pipes are shown, not interpreted. Plot labels escape "$" so that
matplotlib's mathtext never parses them.

`data` (every key optional; a section without data is left out):
    title, run_dir, created: str
    summary: [str]                      headline sentences
    alarms: [str]                       reward-hacking alarms (rlhfkit.eval.overopt.alarms)
    stages: [{round, stage, status, seconds, skipped, metrics: {str: float}}]
    training_curves: {curve name: [{step, score | reward, gold?, kl, response_length | length, ...}]}
    eval_curves: {curve name: [{step, score, gold, kl, length?}]}
    reward_model: [{round, accuracy, auc, ece, train_accuracy, gap, pairs}]
    reward_model_groups: [{round, attribute, group, raters, accuracy, pairs}]   held-out accuracy per rater group
    rater_groups: [{round, attribute, group, raters, labels, share_0, share_1, share_tie, within_agreement}]
    rater_cross: [{round, attribute, groups, pair_agreement, n_pairs, majority_agreement, n_items}]
    calibration: {name: {confidence | mean_predicted | centers | bin_centers, accuracy | fraction_positive | observed,
                  counts}}          (rlhfkit.eval.metrics.calibration_curve_bins output, as lists or as is)
    win_rates: [{round, policy, baseline, judge, wins, ties, losses, rate, ci_low, ci_high}]
    ratings: [{name, elo, bt, bt_ci_low?, bt_ci_high?, games, win_rate?}]
    policies: [{round, name, score, gold, kl, length, distinct_1, distinct_2}]
    kl_per_domain: [{round, name, domain, kl}]   KL to the reference per prompt domain
    overopt: [{round, sqrt_kl, proxy, gold}]
    examples: [{prompt, before, after, gold_before, gold_after}]
    safety: {str: float}
    redteam: {config?: {...}, baseline?: name, models: {name: {n, attacked, seconds, asr_before, asr_after:
              {successes, n, rate, ci_low, ci_high}, per_domain?: {domain: {n, success_before, success_after}},
              rows: [{prompt, domain, attacked, suffix, init_loss, loss, best_losses, steps, stopped, success_before,
              success_after, response_after}]}}}    (rlhfkit.eval.redteam.redteam_model per model)
    pareto_objectives: [str]            the objectives of a preference-vector sweep (rlhfkit pareto)
    pareto: [{policy, weights: [float], <objective>: float, <objective>_se?, scalarized?, length?, on_front?,
              example?: str}]
    live: {run name: rlhfkit.feedback.live.live_report output}   (labels per minute, staleness, gold over time)
NaN and None print as "n/a".
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["pareto_png", "render_html", "render_markdown", "write_report"]

NA = "n/a"
MD_CELL_MAX = 300  # characters of a text cell in Markdown; the HTML report keeps up to TEXT_MAX
TEXT_MAX = 8000
LABEL_MAX = 40  # characters of a name in a plot label

# ---------------------------------------------------------------------------------------------------------------------
# values and escaping


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _num(v: Any) -> float:
    """A plottable float: numbers as they are, anything else NaN."""
    return float(v) if _is_num(v) else float("nan")


def _has(v: Any) -> bool:
    """Present: not None and not a NaN float."""
    return v is not None and not (isinstance(v, (float, np.floating)) and math.isnan(v))


def _fmt(v: Any, spec: str = ".4g") -> str:
    """One cell as text: None / NaN -> n/a, bools yes/no, ints as is, floats by `spec`, the rest str()."""
    if v is None:
        return NA
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return NA
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if spec == "d":  # an integer column holding a float (e.g. from JSON): 3.0 -> "3"
            return str(int(v)) if v.is_integer() else format(v, ".4g")
        return format(v, spec)
    return str(v)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|])")


def _md(text: str, limit: int = MD_CELL_MAX) -> str:
    """Markdown-safe one-line text: whitespace runs (newlines too) become one space; characters that could start
    HTML, links, code or a table cell are backslash-escaped (CommonMark backslash escapes)."""
    return _MD_SPECIAL.sub(r"\\\1", _clip(" ".join(text.split()), limit))


def _label(name: Any) -> str:
    """A plot label: short, with "$" escaped so mathtext does not parse (or choke on) it."""
    return _clip(" ".join(str(name).split()), LABEL_MAX).replace("$", r"\$")


def _floats(values: Any) -> list[float]:
    if values is None:
        return []
    if hasattr(values, "tolist"):
        values = values.tolist()
    if not isinstance(values, Sequence) or isinstance(values, str):
        return []
    return [_num(v) for v in values]


# ---------------------------------------------------------------------------------------------------------------------
# input checks: a malformed section is an error that names its key


def _rows(data: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise ValueError(f"report data[{key!r}] must be a list of objects, got {type(value).__name__}")
    for i, row in enumerate(value):
        if not isinstance(row, Mapping):
            raise ValueError(f"report data[{key!r}][{i}] must be an object, got {type(row).__name__}")
    return list(value)


def _mapping(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"report data[{key!r}] must be an object, got {type(value).__name__}")
    return value


def _strings(data: Mapping[str, Any], key: str) -> list[str]:
    value = data.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Sequence):
        raise ValueError(f"report data[{key!r}] must be a list of strings, got {type(value).__name__}")
    return [str(v) for v in value]


def _curves(data: Mapping[str, Any], key: str) -> dict[str, list[Mapping[str, Any]]]:
    out = {}
    for name, rows in _mapping(data, key).items():
        if not isinstance(rows, Sequence) or isinstance(rows, (str, bytes)):
            raise ValueError(f"report data[{key!r}][{name!r}] must be a list of points, got {type(rows).__name__}")
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, Mapping)), None)
        if bad is not None:
            raise ValueError(f"report data[{key!r}][{name!r}][{bad}] must be an object")
        out[str(name)] = list(rows)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# tables and sections


@dataclass
class _Cell:
    """A table cell whose text is already chosen; css is a class name from this module (never from data)."""

    text: str
    css: str = ""


@dataclass
class _Column:
    key: str
    header: str
    spec: str = ".4g"
    get: Callable[[Mapping[str, Any]], Any] | None = None  # default: row.get(key)


@dataclass
class _Table:
    headers: list[str]
    rows: list[list[Any]]  # raw values (formatted by spec) or _Cell
    specs: list[str]

    def _text(self, v: Any, spec: str) -> str:
        return v.text if isinstance(v, _Cell) else _fmt(v, spec)

    def html(self, css: str = "") -> str:
        head = "".join(f"<th>{_esc(h)}</th>" for h in self.headers)
        body = []
        for row in self.rows:
            cells = []
            for v, spec in zip(row, self.specs):
                cls = v.css if isinstance(v, _Cell) else ("num" if _is_num(v) else "")
                attr = f' class="{cls}"' if cls else ""
                cells.append(f"<td{attr}>{_esc(_clip(self._text(v, spec), TEXT_MAX))}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        cls_attr = f' class="{css}"' if css else ""
        return f"<table{cls_attr}><thead><tr>{head}</tr></thead><tbody>" + "".join(body) + "</tbody></table>"

    def markdown(self) -> str:
        numeric = [
            all(_is_num(r[j]) or r[j] is None for r in self.rows) and any(_is_num(r[j]) for r in self.rows)
            for j in range(len(self.headers))
        ]
        lines = [
            "| " + " | ".join(_md(h) for h in self.headers) + " |",
            "| " + " | ".join("---:" if n else "---" for n in numeric) + " |",
        ]
        for row in self.rows:
            lines.append("| " + " | ".join(_md(self._text(v, s)) for v, s in zip(row, self.specs)) + " |")
        return "\n".join(lines)


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[_Column]) -> _Table:
    """Rows -> table; a column that no row has is dropped (one that some row has shows n/a where missing)."""

    def value(c: _Column, r: Mapping[str, Any]) -> Any:
        return c.get(r) if c.get else r.get(c.key)

    cols = [c for c in columns if any(value(c, r) is not None for r in rows)]
    return _Table([c.header for c in cols], [[value(c, r) for c in cols] for r in rows], [c.spec for c in cols])


@dataclass
class _Section:
    id: str
    title: str
    plots: bool = True  # False: skip drawing (Markdown only)
    html: list[str] = field(default_factory=list)
    md: list[str] = field(default_factory=list)

    def table(self, t: _Table, css: str = "") -> None:
        self.html.append(t.html(css))
        self.md.append(t.markdown())

    def figure(self, draw: Callable[[], str | None], alt: str) -> None:
        png_b64 = draw() if self.plots else None
        if png_b64:
            self.html.append(f'<figure><img alt="{_esc(alt)}" src="data:image/png;base64,{png_b64}"></figure>')

    def bullets(self, items: Sequence[str], css: str = "") -> None:
        cls = f' class="{css}"' if css else ""
        self.html.append(f"<ul{cls}>" + "".join(f"<li>{_esc(s)}</li>" for s in items) + "</ul>")
        self.md.append("\n".join(f"- {_md(s, TEXT_MAX)}" for s in items))

    def note(self, text: str) -> None:
        self.html.append(f'<p class="note">{_esc(text)}</p>')
        self.md.append(_md(text, TEXT_MAX))


# ---------------------------------------------------------------------------------------------------------------------
# figures (matplotlib's object API with the Agg canvas: no pyplot state, no GUI backend)


def _new_figure(panels: int, width: float = 4.4, height: float = 3.3) -> Any:
    fig = Figure(figsize=(width * panels, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})  # no version string in the file
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _first_key(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str | None:
    """The first key that some row holds a finite number under (an all-NaN column counts as absent)."""
    return next((k for k in keys if any(math.isfinite(_num(r.get(k))) for r in rows)), None)


def _xy(rows: Sequence[Mapping[str, Any]], key: str, x_key: str = "step") -> tuple[list[float], list[float]]:
    """Finite (x, y) pairs in x order; rows without x use their position."""
    pts = []
    for i, r in enumerate(rows):
        x = _num(r.get(x_key)) if r.get(x_key) is not None else float(i)
        y = _num(r.get(key))
        if math.isfinite(x) and math.isfinite(y):
            pts.append((x, y))
    pts.sort()
    return [p[0] for p in pts], [p[1] for p in pts]


# A panel: (title, [candidate keys for the solid line], [candidate keys for the dashed line]).
_PanelSpec = tuple[str, tuple[str, ...], tuple[str, ...]]
TRAIN_PANELS: list[_PanelSpec] = [
    ("score (solid) / gold (dashed)", ("score", "reward"), ("gold",)),
    ("KL to reference", ("kl",), ()),
    ("response length", ("response_length", "length"), ()),
]
EVAL_PANELS: list[_PanelSpec] = [
    ("proxy score (solid) / gold (dashed)", ("score", "proxy"), ("gold",)),
    ("KL to reference", ("kl",), ()),
    ("response length", ("length", "response_length"), ()),
]


def _curves_png(curves: Mapping[str, Sequence[Mapping[str, Any]]], panels: Sequence[_PanelSpec]) -> str | None:
    """One panel per metric that some curve has; a line (colour) per curve name."""
    all_rows = [r for rows in curves.values() for r in rows]
    live = [p for p in panels if _first_key(all_rows, p[1] + p[2])]
    if not live:
        return None
    fig = _new_figure(len(live))
    axes = fig.subplots(1, len(live), squeeze=False)[0]
    for ax, (title, solid, dashed) in zip(axes, live):
        for c, (name, rows) in enumerate(curves.items()):
            for keys, style in ((solid, "-"), (dashed, "--")):
                key = _first_key(rows, keys)
                if key:
                    x, y = _xy(rows, key)
                    ax.plot(x, y, style, color=f"C{c % 10}", marker=".", label=_label(name) if style == "-" else None)
        has_dashed = bool(dashed) and any(_first_key(rows, dashed) for rows in curves.values())
        ax.set_title(title if has_dashed else title.split(" (")[0], fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if labels:
        axes[0].legend(fontsize=8)
    return _png(fig)


def _calibration_xy(entry: Any) -> tuple[list[float], list[float], list[float]]:
    """(mean predicted, observed, counts) of one reliability diagram; accepts CalibrationBins or its dict form."""
    if dataclasses.is_dataclass(entry) and not isinstance(entry, type):
        entry = {f.name: getattr(entry, f.name) for f in dataclasses.fields(entry)}
    if not isinstance(entry, Mapping):
        return [], [], []

    def pick(*keys: str) -> list[float]:
        return next((_floats(entry[k]) for k in keys if entry.get(k) is not None), [])

    x = pick("confidence", "mean_predicted", "centers", "bin_centers")
    y = pick("accuracy", "fraction_positive", "observed")
    counts = pick("counts")
    n = min(len(x), len(y))
    counts = (counts + [float("nan")] * n)[:n]
    return x[:n], y[:n], counts


def _calibration_png(calibration: Mapping[str, Any]) -> str | None:
    fig = _new_figure(1, width=4.6, height=4.2)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    drawn = False
    for c, (name, entry) in enumerate(calibration.items()):
        x, y, _ = _calibration_xy(entry)
        pts = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
        if pts:
            ax.plot(*zip(*pts), "-o", color=f"C{c % 10}", label=_label(name))
            drawn = True
    if not drawn:
        return None
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted P(chosen wins)", ylabel="observed fraction")
    ax.set_title("reward-model calibration", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _win_rate_png(rows: Sequence[Mapping[str, Any]]) -> str | None:
    rows = [r for r in rows if math.isfinite(_num(r.get("rate")))]
    if not rows:
        return None
    fig = _new_figure(1, width=max(4.5, 0.9 * len(rows) + 2), height=3.6)
    ax = fig.subplots()
    rounds = sorted({_fmt(r.get("round")) for r in rows})
    rates = [_num(r.get("rate")) for r in rows]
    lo = [rt - _num(r.get("ci_low")) for rt, r in zip(rates, rows)]
    hi = [_num(r.get("ci_high")) - rt for rt, r in zip(rates, rows)]
    colors = [f"C{rounds.index(_fmt(r.get('round'))) % 10}" for r in rows]
    x = np.arange(len(rows))
    ax.bar(x, rates, color=colors, alpha=0.85)
    has_ci = np.isfinite(lo) & np.isfinite(hi)  # a row without a CI gets no error bar
    if has_ci.any():
        err = np.clip(np.array([lo, hi])[:, has_ci], 0.0, None)
        ax.errorbar(x[has_ci], np.array(rates)[has_ci], yerr=err, fmt="none", ecolor="black", capsize=4)
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    labels = []
    for r in rows:
        top = f"R{_fmt(r.get('round'))} {_label(r.get('policy', '?'))}"
        bottom = f"vs {_label(r.get('baseline', '?'))}"
        if r.get("judge") is not None:
            bottom += f" ({_label(r.get('judge'))})"
        labels.append(f"{top}\n{bottom}")
    ax.set_xticks(x, labels, fontsize=8, rotation=20 if len(rows) > 3 else 0, ha="right" if len(rows) > 3 else "center")
    ax.set(ylim=(0, 1), ylabel="win rate (95% CI)")
    ax.set_title("win rate against baseline (0.5 = even)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def _ratings_png(rows: Sequence[Mapping[str, Any]]) -> str | None:
    key = "bt" if any(_is_num(r.get("bt")) for r in rows) else "elo"
    rows = [r for r in rows if math.isfinite(_num(r.get(key)))]
    if len(rows) < 2:
        return None
    rows = sorted(rows, key=lambda r: _num(r.get(key)))
    fig = _new_figure(1, width=6.0, height=0.35 * len(rows) + 1.4)
    ax = fig.subplots()
    vals = np.array([_num(r.get(key)) for r in rows])
    err = None
    if key == "bt" and any(_is_num(r.get("bt_ci_low")) for r in rows):
        lo = np.array([_num(r.get("bt_ci_low")) for r in rows])
        hi = np.array([_num(r.get("bt_ci_high")) for r in rows])
        err = np.nan_to_num(np.clip(np.stack([vals - lo, hi - vals]), 0, None))
    y = np.arange(len(rows))
    ax.barh(y, vals - 1000.0, left=1000.0, xerr=err, capsize=3, color="C0", alpha=0.85)
    ax.set_yticks(y, [_label(r.get("name", "?")) for r in rows], fontsize=8)
    ax.axvline(1000.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("Bradley-Terry rating (95% CI)" if key == "bt" else "Elo rating")
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)


def _overopt_png(rows: Sequence[Mapping[str, Any]]) -> str | None:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_fmt(r.get("round")), []).append(r)
    live = [k for k in ("proxy", "gold") if any(_is_num(r.get(k)) for r in rows)]
    if not live:
        return None
    fig = _new_figure(len(live))
    axes = fig.subplots(1, len(live), squeeze=False)[0]
    for ax, key in zip(axes, live):
        for c, (rnd, pts) in enumerate(groups.items()):
            x, y = _xy(pts, key, x_key="sqrt_kl")
            label = f"round {_label(rnd)}" if rnd != NA else "run"
            ax.plot(x, y, "-o" if key == "proxy" else "--s", color=f"C{c % 10}", markersize=4, label=label)
        ax.set_title(f"{key} reward vs sqrt(KL)", fontsize=10)
        ax.set_xlabel("sqrt(KL to reference)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _png(fig)


def _redteam_png(models: Mapping[str, Mapping[str, Any]]) -> str | None:
    """One panel per model: the best target loss after each GCG step (step 0: the initial suffix), a line per prompt."""
    curves = {
        name: [
            [_num(r.get("init_loss")), *_floats(r.get("best_losses"))] for r in _rows(m, "rows") if r.get("attacked")
        ]
        for name, m in models.items()
    }
    curves = {name: c for name, c in curves.items() if any(len(y) > 1 for y in c)}
    if not curves:
        return None
    fig = _new_figure(len(curves))
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (name, lines) in zip(axes, curves.items()):
        for c, y in enumerate(lines):
            ax.plot(range(len(y)), y, "-", color=f"C{c % 10}", linewidth=1.2)
        ax.set_title(_label(name), fontsize=10)
        ax.set_xlabel("GCG step")
        ax.set_ylabel("target NLL per token (best so far)")
        ax.grid(alpha=0.3)
    return _png(fig)


def _rate_cell(rate: Any) -> str | None:
    if not isinstance(rate, Mapping) or not _has(rate.get("rate")):
        return None
    ci = f"[{_fmt(rate.get('ci_low'), '.2f')}, {_fmt(rate.get('ci_high'), '.2f')}]"
    return f"{_fmt(rate.get('rate'), '.2f')} ({_fmt(rate.get('successes'), 'd')}/{_fmt(rate.get('n'), 'd')}) {ci}"


def _redteam_section(s: _Section, models: Mapping[str, Mapping[str, Any]], baseline: Any = None) -> None:
    summary = [{"model": name, **m} for name, m in models.items()]
    role = "baseline (before alignment)"
    cols = [
        _Column("model", "model"),
        *([_Column("role", "role", get=lambda r: role if r["model"] == baseline else "policy")] if baseline else []),
        _Column("n", "prompts", "d"),
        _Column("attacked", "attacked", "d"),
        _Column("before", "ASR without suffix (95% CI)", get=lambda r: _rate_cell(r.get("asr_before"))),
        _Column("after", "ASR with GCG suffix (95% CI)", get=lambda r: _rate_cell(r.get("asr_after"))),
        _Column("seconds", "search seconds", ".0f"),
    ]
    s.table(_table(summary, cols))
    domains = [
        {"model": name, "domain": d, **c}
        for name, m in models.items()
        for d, c in _mapping(m, "per_domain").items()
        if isinstance(c, Mapping)
    ]
    if domains:
        cols = [
            _Column("model", "model"),
            _Column("domain", "domain"),
            _Column("n", "prompts", "d"),
            _Column("success_before", "successes without suffix", "d"),
            _Column("success_after", "successes with GCG suffix", "d"),
        ]
        s.table(_table(domains, cols))
    s.figure(lambda: _redteam_png(models), "GCG target loss per step")
    rows = [{"model": name, **r} for name, m in models.items() for r in _rows(m, "rows")]
    cols = [
        _Column("model", "model"),
        _Column("domain", "domain"),
        _Column("prompt", "prompt"),
        _Column("suffix", "suffix", get=lambda r: repr(r["suffix"]) if r.get("attacked") else "(not attacked)"),
        _Column("init_loss", "loss start", ".3f"),
        _Column("loss", "loss best", ".3f"),
        _Column("steps", "steps", "d"),
        _Column("stopped", "stopped"),
        _Column(
            "success",
            "success before → after",
            get=lambda r: f"{_fmt(r.get('success_before'))} → {_fmt(r.get('success_after'))}",
        ),
        _Column("response_after", "response after"),
    ]
    s.table(_table(rows, cols))
    s.note(
        "Attack success: the greedy response is not a refusal (a lexicon judge: read the responses). A prompt that "
        "succeeds without a suffix is not attacked. Suffixes are shown as Python string literals."
    )


def _pareto_png(rows: Sequence[Mapping[str, Any]], objectives: Sequence[str]) -> str | None:
    """The first two objectives of every weight vector, a line per policy in sweep order, each point labelled with its
    weights; points on the policy's Pareto front filled, dominated ones hollow."""
    if len(objectives) < 2:
        return None
    ox, oy = objectives[0], objectives[1]
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        if math.isfinite(_num(r.get(ox))) and math.isfinite(_num(r.get(oy))):
            groups.setdefault(_fmt(r.get("policy")), []).append(r)
    if not groups:
        return None
    fig = _new_figure(1, width=5.6, height=4.4)
    ax = fig.subplots()
    for c, (policy, pts) in enumerate(groups.items()):
        color = f"C{c % 10}"
        x, y = [_num(r.get(ox)) for r in pts], [_num(r.get(oy)) for r in pts]
        ax.plot(x, y, "-", color=color, alpha=0.6, label=_label(policy))
        xe = [_num(r.get(f"{ox}_se")) for r in pts]
        ye = [_num(r.get(f"{oy}_se")) for r in pts]
        if all(math.isfinite(v) for v in xe + ye):
            ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="none", ecolor=color, alpha=0.4, capsize=2)
        for r, a, b in zip(pts, x, y):
            on = r.get("on_front") is not False
            ax.plot(a, b, "o", color=color, markerfacecolor=color if on else "white", markersize=6)
            w = "/".join(_fmt(v, ".2g") for v in _floats(r.get("weights") or []))
            ax.annotate(w, (a, b), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    ax.set(xlabel=_label(ox), ylabel=_label(oy))
    ax.set_title("objectives per weight vector (filled: on the policy's Pareto front)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def pareto_png(rows: Sequence[Mapping[str, Any]], objectives: Sequence[str]) -> bytes | None:
    """The report's Pareto-front figure as PNG bytes (for a file beside the report), or None without 2 objectives."""
    encoded = _pareto_png(rows, objectives)
    return base64.b64decode(encoded) if encoded else None


def _live_png(runs: Mapping[str, Any]) -> str | None:
    """Live feedback: labels per minute and gold against wall-clock minutes, and the staleness of the labels used."""
    fig = _new_figure(3)
    ax_rate, ax_age, ax_gold = fig.subplots(1, 3, squeeze=False)[0]
    drawn = False
    for c, (name, run) in enumerate(runs.items()):
        if not isinstance(run, Mapping):
            continue
        color = f"C{c % 10}"
        x, y = _xy(run.get("timeline") or [], "labels_per_min", x_key="minutes")
        ax_rate.plot(x, y, "-", color=color, marker=".", label=_label(name))
        x, y = _xy(run.get("gold") or [], "gold", x_key="minutes")
        ax_gold.plot(x, y, "-o", color=color, markersize=4, label=_label(name))
        hist = [h for h in run.get("staleness") or [] if isinstance(h, Mapping)]
        ages = np.array([_num(h.get("age")) for h in hist])
        width = 0.8 / max(len(runs), 1)
        trained = np.array([_num(h.get("trained")) for h in hist])
        stale = np.array([_num(h.get("stale")) for h in hist])
        ax_age.bar(ages + c * width, trained, width, color=color, label=f"{_label(name)} trained")
        ax_age.bar(ages + c * width, stale, width, bottom=trained, color=color, alpha=0.35, hatch="//",
                   label=f"{_label(name)} stale")  # fmt: skip
        drawn = drawn or bool(x) or bool(hist)
    if not drawn:
        return None
    for ax, title, xlabel in (
        (ax_rate, "labels per minute (sliding window)", "minutes"),
        (ax_age, "staleness of labelled pairs", "age (policy versions)"),
        (ax_gold, "gold score on held-out prompts", "minutes"),
    ):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    ax_age.legend(fontsize=7)
    return _png(fig)


# ---------------------------------------------------------------------------------------------------------------------
# sections


def _status_cell(status: Any, skipped: Any) -> _Cell:
    text = _fmt(status)
    low = text.lower()
    if skipped is True:
        return _Cell(text, "skip")
    if low in {"done", "ok", "success", "succeeded", "completed", "complete", "cached"}:
        return _Cell(text, "ok")
    if low in {"failed", "fail", "error", "errored"}:
        return _Cell(text, "bad")
    return _Cell(text)


def _metrics_text(metrics: Any) -> str:
    if not isinstance(metrics, Mapping):
        return "" if metrics is None else str(metrics)
    return ", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())


def _curve_summary(curves: Mapping[str, Sequence[Mapping[str, Any]]], panels: Sequence[_PanelSpec]) -> _Table:
    """Per curve: number of points, last step, and the latest value of each plotted metric."""
    all_rows = [r for rows in curves.values() for r in rows]
    groups = [c for _, solid, dashed in panels for c in (solid, dashed) if c and _first_key(all_rows, c)]
    rows = []
    for name, pts in curves.items():
        steps = [_num(r.get("step")) for r in pts if _is_num(r.get("step"))]
        row: list[Any] = [name, len(pts), max(steps) if steps else None]
        for cands in groups:
            key = _first_key(pts, cands)  # e.g. "reward" where this curve has no "score"
            ys = _xy(pts, key)[1] if key else []
            row.append(ys[-1] if ys else None)
        rows.append(row)
    headers = ["curve", "points", "last step"] + [f"last {_first_key(all_rows, c)}" for c in groups]
    return _Table(headers, rows, ["", "d", "d"] + [".4g"] * len(groups))


def _examples_html(rows: Sequence[Mapping[str, Any]]) -> str:
    def block(text: Any, gold: Any) -> str:
        head = f'<div class="gold">gold {_esc(_fmt(gold, ".3f"))}</div>' if gold is not None else ""
        return f'{head}<div class="text">{_esc(_clip(_fmt(text) if text is not None else "", TEXT_MAX))}</div>'

    body = []
    for i, r in enumerate(rows):
        body.append(
            f'<tr><td class="num">{i + 1}</td>'
            f'<td><div class="text">{_esc(_clip(str(r.get("prompt", "")), TEXT_MAX))}</div></td>'
            f"<td>{block(r.get('before'), r.get('gold_before'))}</td><td>{block(r.get('after'), r.get('gold_after'))}</td></tr>"
        )
    return (
        '<table class="examples"><thead><tr><th>#</th><th>prompt</th><th>before</th><th>after</th></tr></thead><tbody>'
        + "".join(body)
        + "</tbody></table>"
    )


def _sections(data: Mapping[str, Any], plots: bool = True) -> list[_Section]:
    out: list[_Section] = []

    def section(sid: str, title: str) -> _Section:
        return _Section(sid, title, plots)

    summary = _strings(data, "summary")
    if summary:
        s = section("summary", "Summary")
        s.bullets(summary)
        out.append(s)

    alarm_list = _strings(data, "alarms")
    if alarm_list:
        s = section("alarms", "Alarms")
        s.bullets(alarm_list, css="alarms")
        out.append(s)

    stages = _rows(data, "stages")
    if stages:
        s = section("stages", "Stages")
        cols = [
            _Column("round", "round", "d"),
            _Column("stage", "stage"),
            _Column("status", "status", get=lambda r: _status_cell(r.get("status"), r.get("skipped"))),
            _Column("seconds", "seconds", ".1f"),
            _Column("skipped", "skipped"),
            _Column("metrics", "metrics", get=lambda r: _metrics_text(r.get("metrics")) or None),
        ]
        s.table(_table(stages, cols))
        out.append(s)

    for key, title, panels in (
        ("training_curves", "Training curves", TRAIN_PANELS),
        ("eval_curves", "Evaluation curves", EVAL_PANELS),
    ):
        curves = _curves(data, key)
        if curves:
            s = section(key.replace("_", "-"), title)
            s.figure(lambda c=curves, p=panels: _curves_png(c, p), title)
            s.table(_curve_summary(curves, panels))
            out.append(s)

    rm = _rows(data, "reward_model")
    rm_groups = _rows(data, "reward_model_groups")
    calibration = _mapping(data, "calibration")
    if rm or calibration or rm_groups:
        s = section("reward-model", "Reward model")
        if rm:
            cols = [
                _Column("round", "round", "d"),
                _Column("pairs", "held-out pairs", "d"),
                _Column("accuracy", "accuracy", ".3f"),
                _Column("auc", "AUC", ".3f"),
                _Column("ece", "ECE", ".3f"),
                _Column("train_accuracy", "train accuracy", ".3f"),
                _Column("gap", "train - held-out gap", ".3f"),
            ]
            s.table(_table(rm, cols))
        if rm_groups:  # the rater-demographics audit: does the reward model agree with every group alike?
            cols = [
                _Column("round", "round", "d"),
                _Column("attribute", "rater attribute"),
                _Column("group", "group"),
                _Column("raters", "raters", "d"),
                _Column("pairs", "held-out pairs", "d"),
                _Column("accuracy", "accuracy", ".3f"),
            ]
            s.table(_table(rm_groups, cols))
        if calibration:
            s.figure(lambda: _calibration_png(calibration), "reward-model calibration")
            rows = []
            for name, entry in calibration.items():
                for x, y, n in zip(*_calibration_xy(entry)):
                    if not (math.isfinite(n) and n == 0):  # empty bins say nothing
                        rows.append([str(name), x, y, int(n) if math.isfinite(n) else None])
            if rows:
                s.table(_Table(["calibration", "mean predicted", "observed", "count"], rows, ["", ".3f", ".3f", "d"]))
        out.append(s)

    groups, cross = _rows(data, "rater_groups"), _rows(data, "rater_cross")
    if groups or cross:
        s = section("rater-groups", "Rater groups (label audit)")
        if groups:
            cols = [
                _Column("round", "round", "d"),
                _Column("attribute", "attribute"),
                _Column("group", "group"),
                _Column("raters", "raters", "d"),
                _Column("labels", "labels", "d"),
                _Column("share_0", "A chosen", ".3f"),
                _Column("share_1", "B chosen", ".3f"),
                _Column("share_tie", "tie", ".3f"),
                _Column("within_agreement", "agreement within", ".3f"),
            ]
            s.table(_table(groups, cols))
        if cross:
            cols = [
                _Column("round", "round", "d"),
                _Column("attribute", "attribute"),
                _Column("groups", "groups"),
                _Column("pair_agreement", "label-pair agreement", ".3f"),
                _Column("n_pairs", "label pairs", "d"),
                _Column("majority_agreement", "majorities agree", ".3f"),
                _Column("n_items", "items", "d"),
            ]
            s.table(_table(cross, cols))
        out.append(s)

    wins = _rows(data, "win_rates")
    if wins:
        s = section("win-rates", "Win rates")
        s.figure(lambda: _win_rate_png(wins), "win rates with 95% confidence intervals")
        cols = [
            _Column("round", "round", "d"),
            _Column("policy", "policy"),
            _Column("baseline", "baseline"),
            _Column("judge", "judge"),
            _Column("wins", "wins", "d"),
            _Column("ties", "ties", "d"),
            _Column("losses", "losses", "d"),
            _Column("rate", "win rate", ".3f"),
            _Column(
                "ci",
                "95% CI",
                get=lambda r: (
                    f"{_fmt(r.get('ci_low'), '.3f')} – {_fmt(r.get('ci_high'), '.3f')}"
                    if _has(r.get("ci_low")) or _has(r.get("ci_high"))
                    else None
                ),
            ),
        ]
        s.table(_table(wins, cols))
        s.note("Ties count as half a win.")
        out.append(s)

    ratings = _rows(data, "ratings")
    if ratings:
        s = section("ratings", "Ratings")
        s.figure(lambda: _ratings_png(ratings), "ratings")
        cols = [
            _Column("name", "name"),
            _Column("elo", "Elo", ".1f"),
            _Column("bt", "Bradley-Terry", ".1f"),
            _Column(
                "bt_ci",
                "BT 95% CI",
                get=lambda r: (
                    f"{_fmt(r.get('bt_ci_low'), '.1f')} – {_fmt(r.get('bt_ci_high'), '.1f')}"
                    if _has(r.get("bt_ci_low")) or _has(r.get("bt_ci_high"))
                    else None
                ),
            ),
            _Column("games", "games", "d"),
            _Column("win_rate", "score share", ".3f"),
        ]
        s.table(_table(ratings, cols))
        out.append(s)

    policies = _rows(data, "policies")
    if policies:
        s = section("policies", "Policies")
        cols = [
            _Column("round", "round", "d"),
            _Column("name", "policy"),
            _Column("score", "proxy score", ".3f"),
            _Column("gold", "gold", ".3f"),
            _Column("kl", "KL", ".3f"),
            _Column("length", "mean length", ".1f"),
            _Column("distinct_1", "distinct-1", ".3f"),
            _Column("distinct_2", "distinct-2", ".3f"),
        ]
        s.table(_table(policies, cols))
        out.append(s)

    kl_domains = _rows(data, "kl_per_domain")
    if kl_domains:
        s = section("kl-per-domain", "KL per prompt domain")
        cols = [
            _Column("round", "round", "d"),
            _Column("name", "policy"),
            _Column("domain", "domain"),
            _Column("kl", "KL to reference", ".3f"),
        ]
        s.table(_table(kl_domains, cols))
        out.append(s)

    overopt = _rows(data, "overopt")
    if overopt:
        s = section("overopt", "Over-optimization")
        s.figure(lambda: _overopt_png(overopt), "proxy and gold reward against sqrt(KL)")
        cols = [
            _Column("round", "round", "d"),
            _Column("sqrt_kl", "sqrt(KL)", ".3f"),
            _Column("proxy", "proxy", ".3f"),
            _Column("gold", "gold", ".3f"),
        ]
        s.table(_table(overopt, cols))
        out.append(s)

    live = _mapping(data, "live")
    if live:
        s = section("live", "Live feedback")
        s.figure(lambda: _live_png(live), "labels per minute, staleness and gold over time")
        keys = ("updates", "labels", "labels_per_min", "trained_pairs", "stale_dropped", "downweighted", "ties",
                "staleness_mean", "staleness_max", "pauses", "paused_s", "minutes")  # fmt: skip
        runs = {str(k): v.get("summary") or {} for k, v in live.items() if isinstance(v, Mapping)}
        s.table(
            _Table(["", *runs], [[k, *(r.get(k) for r in runs.values())] for k in keys], ["", *[".4g"] * len(runs)])
        )
        timeline = [
            [str(name), g.get("step"), g.get("minutes"), g.get("gold")]
            for name, run in live.items()
            if isinstance(run, Mapping)
            for g in run.get("gold") or []
            if isinstance(g, Mapping)
        ]
        if timeline:
            s.table(_Table(["run", "update", "minutes", "held-out gold"], timeline, ["", "d", ".2f", ".4f"]))
        s.note(
            "Staleness: policy versions (updates) between the policy that sampled a pair and the update that used it; "
            "stale pairs (beyond label.live.staleness) are dropped or down-weighted. Labels per minute over the "
            "trainer's sliding window; a pause is training held while the rate was below label.live.min_rate."
        )
        out.append(s)

    examples = _rows(data, "examples")
    if examples:
        s = section("examples", "Examples: before and after")
        s.html.append(_examples_html(examples))
        cols = [
            _Column("prompt", "prompt"),
            _Column("before", "before"),
            _Column("gold_before", "gold before", ".3f"),
            _Column("after", "after"),
            _Column("gold_after", "gold after", ".3f"),
        ]
        s.md.append(_table(examples, cols).markdown())
        out.append(s)

    pareto = _rows(data, "pareto")
    if pareto:
        objectives = _strings(data, "pareto_objectives")
        s = section("pareto", "Pareto front")
        s.figure(lambda: _pareto_png(pareto, objectives), "objectives per weight vector")
        cols = [
            _Column("policy", "policy"),
            _Column("weights", "weights", get=lambda r: ", ".join(_fmt(v, ".3g") for v in _floats(r.get("weights")))),
            *[_Column(o, o, ".3f") for o in objectives],
            _Column("scalarized", "w · r", ".3f"),
            _Column("length", "length", ".1f"),
            _Column("on_front", "on front"),
            _Column("example", "example (first prompt)"),
        ]
        s.table(_table(pareto, cols))
        s.note(
            "Each objective's mean over the held-out prompts under that weight vector's tag; a point is on the "
            "front when no other weight vector of the same policy scores at least as well on every objective. "
            "The example is the first held-out prompt's first response under that tag."
        )
        out.append(s)

    safety = _mapping(data, "safety")
    if safety:
        s = section("safety", "Safety")
        s.table(_Table(["metric", "value"], [[str(k), v] for k, v in safety.items()], ["", ".4g"]))
        out.append(s)

    models = _mapping(_mapping(data, "redteam"), "models")
    if models:
        bad = next((k for k, m in models.items() if not isinstance(m, Mapping)), None)
        if bad is not None:
            raise ValueError(f"report data['redteam']['models'][{bad!r}] must be an object")
        s = section("redteam", "Red team: GCG adversarial suffixes")
        _redteam_section(s, models, _mapping(data, "redteam").get("baseline"))
        out.append(s)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# pages

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1f2328; background: #fff; }
main { max-width: 1150px; margin: 0 auto; padding: 24px; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.25em; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; margin-top: 32px; }
.meta { color: #59636e; font-size: 0.9em; margin: 2px 0; }
nav { font-size: 0.9em; margin: 14px 0; }
nav a { margin-right: 12px; color: #0969da; text-decoration: none; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
ul.alarms { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 8px 8px 8px 28px; }
.ok { color: #1a7f37; } .bad { color: #d1242f; font-weight: 600; } .skip { color: #59636e; font-style: italic; }
.note { color: #59636e; font-size: 0.85em; }
figure { margin: 8px 0 16px; } figure img { max-width: 100%; height: auto; }
table.examples { table-layout: fixed; width: 100%; } table.examples td:first-child, table.examples th:first-child { width: 2.5em; }
.text { white-space: pre-wrap; word-break: break-word; font-family: ui-monospace, Menlo, Consolas, monospace;
        font-size: 0.85em; max-height: 24em; overflow: auto; }
.gold { font-size: 0.8em; color: #59636e; margin-bottom: 4px; }
"""

# Defence in depth: even if some text escaped html.escape, the browser runs no script and loads nothing remote.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _title(data: Mapping[str, Any]) -> str:
    return str(data.get("title") or "rlhfkit report")


def _meta(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(label, str(data[k])) for k, label in (("run_dir", "run"), ("created", "created")) if data.get(k)]


def _check(data: Any) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"report data must be an object, got {type(data).__name__}")


def render_html(data: Mapping[str, Any]) -> str:
    """The self-contained HTML page for `data` (see the module docstring)."""
    _check(data)
    return _html_page(data, _sections(data))


def render_markdown(data: Mapping[str, Any]) -> str:
    """The Markdown version of the report: the same sections as tables and lists, without plots."""
    _check(data)
    return _md_page(data, _sections(data, plots=False))


def _html_page(data: Mapping[str, Any], sections: list[_Section]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(_title(data))}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_esc(_title(data))}</h1>",
    ]
    parts += [f'<p class="meta">{_esc(label)}: {_esc(value)}</p>' for label, value in _meta(data)]
    if sections:
        parts.append("<nav>" + "".join(f'<a href="#{s.id}">{_esc(s.title)}</a>' for s in sections) + "</nav>")
    else:
        parts.append('<p class="note">No results to report yet.</p>')
    for s in sections:
        parts.append(f'<section id="{s.id}"><h2>{_esc(s.title)}</h2>')
        parts += s.html
        parts.append("</section>")
    parts.append('<p class="note">Generated by rlhfkit.</p></main></body></html>')
    return "\n".join(parts) + "\n"


def _md_page(data: Mapping[str, Any], sections: list[_Section]) -> str:
    parts = [f"# {_md(_title(data), TEXT_MAX)}"]
    meta = _meta(data)
    if meta:
        parts.append("\n".join(f"{label}: {_md(value, TEXT_MAX)}  " for label, value in meta))
    if not sections:
        parts.append("No results to report yet.")
    for s in sections:
        parts.append(f"## {s.title}")
        parts += s.md
    return "\n\n".join(parts) + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # atomic: a reader never sees half a report


def write_report(data: Mapping[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write out_dir/report.html and out_dir/report.md; returns (html path, markdown path)."""
    _check(data)
    sections = _sections(data)  # once: the figures are the slow part
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_text, md_text = _html_page(data, sections), _md_page(data, sections)
    html_path, md_path = out / "report.html", out / "report.md"
    _write(html_path, html_text)
    _write(md_path, md_text)
    return html_path, md_path

"""rlhfkit.eval.report: every section renders, hostile text stays text, the page is self-contained, NaN is "n/a"."""

from __future__ import annotations

import base64
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rlhfkit.eval.metrics import calibration_curve_bins
from rlhfkit.eval.report import render_html, render_markdown, write_report

SCRIPT = "<script>alert(1)</script>"
IMG = '<img src=x onerror="alert(2)">'
URL = "https://evil.example/steal.js"
NAN = float("nan")


def sample_data() -> dict[str, Any]:
    bins = calibration_curve_bins([0.1, 0.2, 0.8, 0.9, 0.95], [0, 1, 1, 1, 0], n_bins=5)
    return {
        "title": "Demo " + SCRIPT,
        "run_dir": "runs/" + IMG,
        "created": "2025-01-01T00:00:00",
        "summary": ["Policy beats SFT " + SCRIPT, "Gold +0.31"],
        "stages": [
            {
                "round": 1,
                "stage": "sft",
                "status": "done",
                "seconds": 12.34,
                "skipped": False,
                "metrics": {"loss": 1.5},
            },
            {"round": 1, "stage": "ppo " + IMG, "status": "failed", "seconds": NAN, "metrics": {SCRIPT: 0.5}},
            {"round": 2, "stage": "rm", "status": "skipped", "seconds": 0.0, "skipped": True},
        ],
        "training_curves": {
            "round 1 / ppo": [
                {"step": s, "score": 0.1 * s, "gold": 0.05 * s, "kl": 0.3 * s, "response_length": 20.0 + s}
                for s in range(6)
            ],
            "round 2 " + SCRIPT + " cost $5 $\\frac{": [{"step": s, "reward": 0.2 * s, "kl": NAN} for s in range(6)],
        },
        "eval_curves": {"round 1 / ppo": [{"step": s, "score": 0.1 * s, "gold": 0.2, "kl": 0.5 * s} for s in (0, 2)]},
        "calibration": {
            "round 1": {k: v.tolist() for k, v in vars(bins).items()},  # calibration_curve_bins as lists
            "round 2 " + SCRIPT: {"mean_predicted": [0.2, 0.8], "fraction_positive": [0.25, 0.7], "counts": [4, 6]},
        },
        "reward_model": [
            {"round": 1, "accuracy": 0.71, "auc": 0.78, "ece": 0.05, "train_accuracy": 0.8, "gap": 0.09, "pairs": 200}
        ],
        "win_rates": [
            {
                "round": 1,
                "policy": "ppo-r1",
                "baseline": "sft",
                "judge": "gold",
                "wins": 60,
                "ties": 10,
                "losses": 30,
                "rate": 0.65,
                "ci_low": 0.55,
                "ci_high": 0.74,
            },
            {
                "round": 2,
                "policy": "ppo-r2 " + SCRIPT,
                "baseline": "sft",
                "judge": IMG,
                "wins": 7,
                "ties": 0,
                "losses": 3,
                "rate": 0.7,
                "ci_low": NAN,
                "ci_high": NAN,
            },
        ],
        "ratings": [
            {"name": "sft", "elo": 950.0, "bt": 940.0, "bt_ci_low": 900.0, "bt_ci_high": 980.0, "games": 40},
            {"name": "ppo " + IMG, "elo": 1050.0, "bt": 1060.0, "bt_ci_low": 1020.0, "bt_ci_high": 1100.0, "games": 40},
        ],
        "policies": [
            {
                "round": 0,
                "name": "sft",
                "score": 0.1,
                "gold": 0.2,
                "kl": 0.0,
                "length": 20.0,
                "distinct_1": 0.6,
                "distinct_2": 0.9,
            },
            {
                "round": 1,
                "name": "ppo " + SCRIPT,
                "score": 0.9,
                "gold": NAN,
                "kl": 3.2,
                "length": 31.5,
                "distinct_1": 0.4,
                "distinct_2": 0.7,
            },
        ],
        "overopt": [
            {"round": r, "sqrt_kl": math.sqrt(k), "proxy": 0.3 * k, "gold": math.sqrt(k) * (0.5 - 0.2 * math.sqrt(k))}
            for r in (1, 2)
            for k in (0.0, 1.0, 4.0)
        ],
        "alarms": ["Gold peak passed: gold peaked at KL 1.56 " + SCRIPT],
        "examples": [
            {
                "prompt": "Review: " + SCRIPT + "\nline two | pipe",
                "before": "meh " + IMG,
                "after": f"great {URL}",
                "gold_before": -0.2,
                "gold_after": NAN,
            },
            {
                "prompt": "p2",
                "before": "[x](javascript:alert(3))",
                "after": "`code`",
                "gold_before": 0.1,
                "gold_after": 0.4,
            },
        ],
        "safety": {"toxicity " + SCRIPT: 0.01, "refusal_rate": NAN},
    }


SECTIONS = [
    "Summary", "Alarms", "Stages", "Training curves", "Evaluation curves", "Reward model", "Win rates", "Ratings",
    "Policies", "Over-optimization", "Examples: before and after", "Safety",
]  # fmt: skip


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path, Path]:
    out = tmp_path_factory.mktemp("report") / "nested" / "dir"  # created on demand
    html_path, md_path = write_report(sample_data(), out)
    return html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8"), html_path, md_path


def test_files_and_every_section(written: tuple[str, str, Path, Path]) -> None:
    page, md, html_path, md_path = written
    assert html_path.name == "report.html" and md_path.name == "report.md" and html_path.parent == md_path.parent
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
        assert f"\n## {title}\n" in md
    # sections in a fixed order, in both files
    assert [page.index(f"<h2>{t}</h2>") for t in SECTIONS] == sorted(page.index(f"<h2>{t}</h2>") for t in SECTIONS)
    assert [md.index(f"## {t}\n") for t in SECTIONS] == sorted(md.index(f"## {t}\n") for t in SECTIONS)
    assert not list(html_path.parent.glob("*.tmp"))


def test_hostile_text_is_escaped_in_html(written: tuple[str, str, Path, Path]) -> None:
    page = written[0]
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in page
    # every tag on the page is ours: images are only the embedded plots, no event handler attribute anywhere
    assert all(
        tag.startswith('<img alt="') and 'src="data:image/png;base64,' in tag for tag in re.findall(r"<img[^>]*>", page)
    )
    assert not re.search(r"<[^>]*\son\w+\s*=", page)
    assert "javascript:" not in re.sub(r">[^<]*<", "><", page)  # only inside text, never inside a tag


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.seen: set[str] = set()
        self.attrs: set[str] = set()
        self.unbalanced: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.add(tag)
        self.attrs.update(name for name, _ in attrs)
        if tag not in {"meta", "img"}:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.open and self.open[-1] == tag:
            self.open.pop()
        else:
            self.unbalanced.append(tag)


def test_html_parses_to_our_tags_only(written: tuple[str, str, Path, Path]) -> None:
    parser = _Tags()
    parser.feed(written[0])
    assert parser.open == [] and parser.unbalanced == []  # well formed: data never closed one of our tags
    allowed = {"html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "p", "nav", "a", "section", "ul",
               "li", "table", "thead", "tbody", "tr", "th", "td", "figure", "img", "div"}  # fmt: skip
    assert parser.seen <= allowed
    assert parser.attrs <= {"lang", "charset", "http-equiv", "content", "name", "href", "id", "class", "alt", "src"}


def test_html_is_self_contained(written: tuple[str, str, Path, Path]) -> None:
    page = written[0]
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 6  # training, eval, calibration, win rates, ratings, over-optimization
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", page, re.I)
    assert "url(" not in page and "@import" not in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "https://evil.example" in page  # the hostile URL is shown as text in its example cell


def test_markdown_tables_and_escaping(written: tuple[str, str, Path, Path]) -> None:
    md = written[1]
    assert "| round | policy | baseline | judge | wins | ties | losses | win rate | 95% CI |" in md
    assert "| 1 | ppo-r1 | sft | gold | 60 | 10 | 30 | 0.650 | 0.550 – 0.740 |" in md
    assert "| 2 | ppo-r2 \\<script\\>alert(1)\\</script\\> | sft | \\<img src=x" in md
    assert "<script" not in md.replace("\\<script", "")  # every "<" from data is backslash-escaped
    assert "line two \\| pipe" in md  # no stray column, no line break inside a row
    assert "\\[x\\](javascript:alert(3))" in md and "\\`code\\`" in md
    assert "data:image" not in md


def test_nan_is_na(written: tuple[str, str, Path, Path]) -> None:
    page, md = written[0], written[1]
    assert "| 1 | ppo \\<script\\>alert(1)\\</script\\> | 0.900 | n/a | 3.200 | 31.5 | 0.400 | 0.700 |" in md
    assert "| refusal_rate | n/a |" in md
    assert "| 2 | ppo-r2" in md and "| 0.700 | n/a |" in md  # CI missing: one n/a, not "n/a – n/a"
    assert '<td class="num">n/a</td>' in page
    assert not re.search(r"\bnan\b", md, re.I) and not re.search(r">\s*nan\s*<", page, re.I)


def test_stage_rows_and_calibration_table(written: tuple[str, str, Path, Path]) -> None:
    page, md = written[0], written[1]
    assert '<td class="ok">done</td>' in page and '<td class="bad">failed</td>' in page
    assert "| 1 | sft | done | 12.3 | no | loss=1.5 |" in md
    # calibration_curve_bins output: bins [0, .2) [.2, .4) [.8, 1] hold 1, 1 and 3 probabilities, 2 bins are empty
    # (dropped); the x value is the mean predicted probability in the bin, not the bin centre
    assert "| round 1 | 0.100 | 0.000 | 1 |" in md and "| round 1 | 0.200 | 1.000 | 1 |" in md
    assert "| round 1 | 0.883 | 0.667 | 3 |" in md and md.count("| round 1 |") == 3
    assert "| round 2 \\<script\\>alert(1)\\</script\\> | 0.200 | 0.250 | 4 |" in md


def test_missing_sections_are_omitted() -> None:
    only = {"win_rates": sample_data()["win_rates"], "stages": [], "policies": None}
    page, md = render_html(only), render_markdown(only)
    assert "<h2>Win rates</h2>" in page and "## Win rates" in md
    for title in SECTIONS:
        if title != "Win rates":
            assert f"<h2>{title}</h2>" not in page and f"## {title}" not in md
    assert page.count("data:image/png;base64,") == 1
    assert "<h1>rlhfkit report</h1>" in page and md.startswith("# rlhfkit report\n")
    empty = render_markdown({})
    assert "No results to report yet." in empty and "##" not in empty
    assert "No results to report yet." in render_html({})


def test_calibration_bins_object_and_float_integers() -> None:
    bins = calibration_curve_bins(np.array([0.1, 0.9]), np.array([0, 1]), n_bins=2)
    data = {"calibration": {"rm": bins}, "reward_model": [{"round": 1.0, "pairs": 20.0, "accuracy": 0.5}]}
    md = render_markdown(data)
    assert "| rm | 0.100 | 0.000 | 1 |" in md and "| rm | 0.900 | 1.000 | 1 |" in md
    assert "| 1 | 20 | 0.500 |" in md  # integers that arrived as floats (JSON) print as integers
    assert render_html(data).count("data:image/png;base64,") == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"win_rates": "oops"}, r"data\['win_rates'\] must be a list"),
        ({"stages": [1]}, r"data\['stages'\]\[0\] must be an object"),
        ({"safety": [1, 2]}, r"data\['safety'\] must be an object"),
        ({"training_curves": {"a": 3}}, r"data\['training_curves'\]\['a'\] must be a list"),
        ([1, 2], "report data must be an object"),
    ],
)
def test_malformed_sections_name_their_key(data: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_markdown(data)

"""The HTML report as a reviewer sees it: the first screen (verdict, 2×2 table, curves, checks tally with
every non-pass), collapsible details, a matrix that scrolls. Structure without a browser everywhere; layout
in headless Chromium where it and playwright are installed (.ci/run installs Chromium)."""

from __future__ import annotations

import importlib.util
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from robustaudit.evaluate.result import COLUMNS, WORST_CASE, Example, ResultMatrix
from robustaudit.reports import render_html, render_markdown

EPS = (0.05, 0.1, 0.2, 0.3)
MODELS = tuple(f"digits-model-{i}{'+squeeze' if i >= 4 else ''}" for i in range(8))
N = 359


def _records() -> pd.DataFrame:
    rows = []
    for m, model in enumerate(MODELS):
        for a, attack in enumerate(("fgsm", "pgd", "pgd (adaptive)", WORST_CASE)):
            for e, eps in enumerate(EPS):
                k = max(0, 340 - 60 * (e + 1) * (1 + a % 3) + 10 * m)
                rows.append(dict(model=model, attack=attack, eps=eps, norm="linf", n=N, n_clean_correct=350,
                                 n_robust=k, clean_accuracy=350 / N, robust_accuracy=k / N, ci_low=k / N - 0.04,
                                 ci_high=k / N + 0.04, seconds=1.0))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _result() -> ResultMatrix:
    checks = [{"id": "logits-output", "model": m, "status": "pass", "message": "outputs are logits",
               "doc": "docs/checks.md#logits-output"} for m in MODELS[:4] for _ in range(15)]
    checks += [{"id": "loss-gap", "model": MODELS[1], "status": "fail", "message": "margin PGD breaks 40 more",
                "doc": "docs/checks.md#loss-gap"},
               {"id": "monotone-eps", "model": MODELS[2], "status": "warn", "message": "9 reversals",
                "doc": "docs/checks.md#monotone-eps"}]
    rng = np.random.default_rng(0)
    examples = [Example(m, "pgd", 0.2, rng.random((1, 8, 8)), rng.random((1, 8, 8)), 1, 1, 2) for m in MODELS[:2]]
    provenance = {"threat": {"norm": "linf", "bounds": [0.0, 1.0], "eps": list(EPS)},
                  "data": {"name": "digits", "n": N, "num_classes": 10},
                  "attacks": [{"name": "fgsm", "kind": "fixed-eps", "settings": {"loss": "ce"}},
                              {"name": "pgd", "kind": "fixed-eps", "settings": {"steps": 50}}],
                  "reliability": {MODELS[1]: {"reliable": False, "reasons": ["loss-gap failed"]}},
                  "seed": 0, "config": {"n": N}}
    return ResultMatrix(_records(), provenance, examples, checks)


class _Page(HTMLParser):
    """Ids of elements, the text inside each, and which ids sit inside a <details>."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str | None]] = []
        self.text: dict[str, str] = {}
        self.in_details: set[str] = set()

    def handle_starttag(self, tag, attrs):
        ident = dict(attrs).get("id")
        if ident and any(t == "details" for t, _ in self.stack):
            self.in_details.add(ident)
        if tag not in ("img", "meta", "br", "input"):
            self.stack.append((tag, ident))
        if ident:
            self.text.setdefault(ident, "")

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        for _, ident in self.stack:
            if ident:
                self.text[ident] += data


@pytest.fixture(scope="module")
def page() -> str:
    return render_html(_result())


def test_the_first_screen_holds_verdict_table_curves_and_every_non_pass(page):
    parsed = _Page()
    parsed.feed(page)
    first = parsed.text["first-screen"]
    for ident in ("verdict", "clean-vs-adversarial", "checks-tally"):
        assert ident in parsed.text and ident not in parsed.in_details
    assert re.search(r'<img class="figure" id="curves" alt="[^"]*" src="data:image/png;base64,', page)
    assert "60 pass, 1 warn, 1 fail" in parsed.text["checks-tally"]
    # every non-pass on the first screen, the 60 passes only in the details
    assert "loss-gap" in first and "monotone-eps" in first and "logits-output" not in first
    # the upper bound: written as such, never coloured as a pass
    verdict = parsed.text["verdict"]
    # 4 catalog models checked (one an upper bound), 4 detector rows without a check of their own
    assert "≤ 47.4 (upper bound: loss-gap failed)" in verdict
    assert verdict.count("reliable") == 3 and verdict.count("no sanity check ran") == 4
    row = re.search(r"<tr><td class=\"name\">digits-model-1</td><td>[^<]*</td>(.*?)</tr>", page, re.S).group(1)
    assert '<td class="num upper">≤ 47.4 (upper bound: loss-gap failed)</td>' in row
    assert "white-box (gradients), untargeted: fgsm, pgd" in page
    # what an upper bound means, under the verdict, linked to its inlined section
    assert "so their worst case is only an upper bound (see Upper bounds)." in " ".join(verdict.split())
    assert 'only an upper bound (see <a href="#doc-upper-bounds">Upper bounds</a>).</p>' in page
    assert 'id="doc-upper-bounds"' in page and "doc-upper-bounds" in parsed.in_details


def test_details_are_collapsed_and_hold_matrix_noise_checks_and_provenance(page):
    parsed = _Page()
    parsed.feed(page)
    for ident in ("matrix-scroll", "checks", "provenance", "setup", "examples"):
        assert ident in parsed.in_details or page.count(f'<details id="{ident}">') == 1
    assert "<details open" not in page
    assert "Examples cover 2 of 8 models" in parsed.text["examples"]
    assert 'class="scroll" id="matrix-scroll"' in page and ".scroll { overflow-x: auto;" in page
    # glyphs from plain Unicode, no emoji; check docs inlined as anchors, no relative link
    assert not re.search("[\u2705\u274c\u26a0\U0001F300-\U0001FAFF]", page)
    assert '<a href="#doc-loss-gap">' in page and 'id="doc-loss-gap"' in page and 'href="docs/' not in page
    assert "doc-loss-gap" in parsed.in_details  # the inlined docs are collapsed too


def test_markdown_shows_the_same_marks_and_the_per_eps_noise_table():
    md = render_markdown(_result())
    assert "| ✗ fail | `loss-gap` |" in md and "| ! warn | `monotone-eps` |" in md
    # check docs as anchors of the file itself, not relative links that break outside the checkout
    assert "| [loss-gap](#loss-gap) |" in md and "docs/checks.md#loss-gap" not in md
    docs = md.split("## What the checks test\n\n")[1]
    assert "### loss-gap\n\nThe audit's iterative attack with the other loss" in docs
    # the upper bound's explanation links to its section, carried along too
    assert "[Upper bounds](#upper-bounds)" in md and "### upper-bounds\n\n" in docs
    # without stored per-sample outcomes nothing is compared, and the section says so instead of a table
    assert "No per-sample outcomes were stored, so nothing is compared." in md


# ------------------------------------------------------------------------------------------ browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
FIRST_SCREEN = ("#verdict", "#clean-vs-adversarial", "#curves", "#checks-tally")


@pytest.fixture(scope="module")
def browser():
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (.ci/run installs it with apt-get)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.mark.slow
def test_chromium_shows_the_first_screen_at_1400_and_scrolls_the_matrix_at_800(browser, page, tmp_path):
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    tab = browser.new_page(viewport={"width": 1400, "height": 900})
    tab.goto(path.as_uri())
    for selector in FIRST_SCREEN:
        box = tab.locator(selector).bounding_box()
        assert tab.locator(selector).is_visible() and box is not None, selector
        assert box["y"] >= 0 and box["y"] + box["height"] <= 900 and box["x"] + box["width"] <= 1400, (selector, box)
    assert tab.evaluate("document.querySelector('#curves').naturalWidth") > 0  # the PNG decoded
    assert not tab.locator("#matrix-scroll").is_visible()  # collapsed until opened

    tab = browser.new_page(viewport={"width": 800, "height": 900})
    tab.goto(path.as_uri())
    tab.locator("#matrix > summary").click()
    scroll = tab.locator("#matrix-scroll")
    assert scroll.is_visible()
    width, client = tab.evaluate("e => [e.scrollWidth, e.clientWidth]", scroll.element_handle())
    assert width > client, "the matrix fits at 800 px: the test no longer tests scrolling"
    assert tab.evaluate("document.documentElement.scrollWidth") <= 800  # the page itself is not cut or widened
    scroll.evaluate("e => { e.scrollLeft = e.scrollWidth; }")
    last = tab.locator("#matrix-scroll th").last.bounding_box()
    assert last["x"] + last["width"] <= 800 + 1  # the last column can be scrolled into view

    # a check's doc link on the first screen opens the collapsed section that holds the doc
    assert not tab.locator("#doc-loss-gap").is_visible()
    tab.locator("#checks-tally a[href='#doc-loss-gap']").first.click()
    assert tab.locator("#doc-loss-gap").is_visible()


def test_markdown_and_terminal_write_the_upper_bound_too():
    import io

    from rich.console import Console

    from robustaudit.reports import render_terminal

    result = _result()
    summary = render_markdown(result).split("## Clean vs adversarial")[1].split("\n## ")[0]
    assert "| digits-model-1 | — | 97.5 [" in summary and "| **≤ 47.4 [" in summary  # the interval stays beside ≤
    verdict = render_markdown(result).split("## Verdict")[1].split("\n## ")[0]
    assert "≤ 47.4 (upper bound: loss-gap failed)" in verdict
    console = Console(file=io.StringIO(), width=250)
    render_terminal(result, console)
    assert "≤ 47.4 (upper bound: loss-gap failed)" in console.file.getvalue()


def test_check_docs_come_from_docs_checks_md_including_shared_sections(tmp_path):
    from robustaudit.reports.view.checkdocs import check_doc

    assert check_doc("loss-gap")[0].startswith("The audit's iterative attack with the other loss")
    assert check_doc("more-steps") == check_doc("more-restarts") != ()  # "### more-steps, more-restarts"
    assert check_doc("no-such-check") == () and check_doc("loss-gap", tmp_path / "absent.md") == ()


def test_the_threat_model_says_what_the_attacks_may_see_and_aim_at_for_segmentation_too():
    from test_report_view import _segmentation

    result = _segmentation()
    result.provenance["attacks"] = [{"name": "pgd", "kind": "fixed-eps", "settings": {}},
                                    {"name": "segpgd:target=1", "kind": "fixed-eps", "settings": {"target": 1}},
                                    {"name": "square", "kind": "score-based", "settings": {}}]
    page = render_html(result, images=False)
    threat = page.split('id="threat">')[1].split("</p>")[0]
    assert ("attacks: white-box (gradients), untargeted: pgd; white-box (gradients), targeted: segpgd:target=1; "
            "black-box (scores only), untargeted: square") in threat


def test_markdown_leads_with_the_verdict():
    md = render_markdown(_result())
    verdict = md.split("## Verdict\n\n")[1].split("\n## ")[0]
    assert md.index("## Verdict") < md.index("## Threat model") < md.index("## Robust accuracy")
    assert "| digits-model-1 | ≤ 47.4 (upper bound: loss-gap failed) | ✗ upper bound: loss-gap failed |" in verdict
    assert "| digits-model-0 | 44.6 [40.6–48.6] | ✓ reliable |" in verdict
    assert verdict.count("! no sanity check ran") == 4


@pytest.mark.slow
def test_chromium_shows_the_first_screen_of_a_real_audits_report(browser, tmp_path):
    """Not only the synthetic page: a real (small) audit of two catalog models, one behind the detector."""
    from robustaudit.cli import main

    out = tmp_path / "out"
    argv = ["audit", "--model", "digits-cnn", "--model", "digits-cnn-pgdat", "--attack", "fgsm", "--eps", "0.1,0.2",
            "--defense", "squeeze", "--n", "48", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    tab = browser.new_page(viewport={"width": 1400, "height": 900})
    tab.goto((out / "report.html").as_uri())
    for selector in FIRST_SCREEN:
        box = tab.locator(selector).bounding_box()
        assert tab.locator(selector).is_visible() and box is not None, selector
        assert box["y"] >= 0 and box["y"] + box["height"] <= 900, (selector, box)
    verdict = tab.locator("#verdict").inner_text()
    assert "digits-cnn-pgdat" in verdict and "digits-cnn+squeeze" in verdict

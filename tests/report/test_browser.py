"""report.html and the compare page as a person sees them: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, which .ci/run installs) renders the pages of a tiny run, its TF-IDF baseline, a regression run,
a cross-validation parent and the leaderboard at 1280x900, takes screenshots (also copied to /tmp/textune_screens/
to look at), and checks: no console errors, no broken image, nothing wider than the window, no table wider than
its box unless it sits in a scroll container, and every number hooked with ``data-metric`` equal to the value in
the summary.json it mirrors. Without Chromium or its driver the tests skip and say which package to install.

Selenium drives the system chromedriver by its path, so Selenium Manager never looks for (or downloads) a driver.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import make_news, write_recipe

from textune.cli import main

SCREENS = Path("/tmp/textune_screens")
WIDTH, HEIGHT = 1280, 900
CHROMIUM = next((p for n in ("chromium", "chromium-browser") if (p := shutil.which(n))), None)
CHROMEDRIVER = shutil.which("chromedriver") or next(
    (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if os.path.isfile(p)), None
)

# What the checks read from a rendered page, in one round trip.
FACTS_JS = """
const inScroll = el => { for (let p = el.parentElement; p; p = p.parentElement)
    { if (p.classList.contains('scroll')) return true; } return false; };
const describe = el => el.outerHTML.slice(0, 160);
return {
  viewport: window.innerWidth,
  docWidth: document.documentElement.scrollWidth,
  images: document.images.length,
  brokenImages: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || describe(i)),
  overflowingTables: [...document.querySelectorAll('table')]
      .filter(t => !inScroll(t) && t.scrollWidth > t.parentElement.clientWidth).map(describe),
  overflowingScrollBoxes: [...document.querySelectorAll('.scroll')]
      .filter(b => b.getBoundingClientRect().right > window.innerWidth + 0.5).map(describe),
  hooks: [...document.querySelectorAll('[data-metric]')].map(e => ({
      key: e.dataset.metric, value: e.dataset.value, run: e.dataset.run || null, text: e.textContent.trim()})),
  text: document.body.innerText,
};
"""


def _skip_reason() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[dev]'"
    missing = [pkg for pkg, path in (("chromium", CHROMIUM), ("chromium-driver", CHROMEDRIVER)) if not path]
    if missing:
        return (
            f"browser tests skipped: Debian package(s) {' and '.join(missing)} not installed; "
            "apt-get install chromium chromium-driver (.ci/run installs them)"
        )
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _skip_reason()
    if reason:
        print(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={WIDTH},{HEIGHT}")
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # belt and braces: Selenium Manager must never reach the network
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _viewport(driver, height: int) -> None:
    metrics = {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)


def render(driver, page: Path, shot: Path) -> dict:
    """Opens ``page`` at 1280x900, saves the first screen as ``shot`` and the whole page as ``<shot>_full.png``
    (both copied to /tmp/textune_screens/), and returns what the checks need, console entries included."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop what earlier pages logged
    _viewport(driver, HEIGHT)
    driver.get(page.resolve().as_uri())
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return [...document.images].every(i => i.complete)"))
    shot.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(shot))
    # collapsed parts (environment, recipe) are checked, and shown in the full-page shot, opened
    driver.execute_script("document.querySelectorAll('details').forEach(d => { d.open = true; })")
    facts = driver.execute_script(FACTS_JS)
    full = shot.with_name(shot.stem + "_full.png")
    _viewport(driver, max(HEIGHT, int(driver.execute_script("return document.documentElement.scrollHeight"))))
    driver.save_screenshot(str(full))
    _viewport(driver, HEIGHT)
    SCREENS.mkdir(parents=True, exist_ok=True)
    for f in (shot, full):
        shutil.copy(f, SCREENS / f.name)
    facts["console"] = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    return facts


def _lookup(summary: object, key: str) -> object:
    for part in key.split("."):
        if isinstance(summary, list) and part.isdigit() and int(part) < len(summary):
            summary = summary[int(part)]
        elif isinstance(summary, dict):
            summary = summary.get(part)
        else:
            return None
    return summary


def _shown_matches(text: str, value: float) -> bool:
    """The text shown (``0.9150``, ``1,011,492``, ``1,685.2``) is ``value`` rounded to the digits shown."""
    try:
        shown = float(text.replace(",", ""))
    except ValueError:
        return False
    decimals = len(text.rpartition(".")[2]) if "." in text else 0
    return abs(shown - value) <= 0.5 * 10**-decimals * (1 + 1e-9)


def hook_problems(page_dir: Path, hooks: list[dict]) -> list[str]:
    """Each hooked number against the summary.json it mirrors: the full value exactly, the shown text rounded."""
    problems = []
    for h in hooks:
        where = page_dir / h["run"] if h["run"] else page_dir
        path = where / "summary.json"
        want = _lookup(json.loads(path.read_text()), h["key"]) if path.is_file() else None
        if not isinstance(want, int | float) or isinstance(want, bool):
            problems.append(f"{h['key']} (in {path}): no number there, the page shows {h['text']!r}")
        elif float(h["value"]) != float(want):
            problems.append(f"{h['key']} (in {path}): data-value {h['value']} but summary.json has {want!r}")
        elif not _shown_matches(h["text"], float(want)):
            problems.append(f"{h['key']} (in {path}): shows {h['text']!r} for {want!r}")
    return problems


def page_problems(facts: dict, page_dir: Path) -> list[str]:
    """Everything wrong with a rendered page, one line each; an empty list is a page a person can read."""
    problems = [f"console: {e.get('message')}" for e in facts["console"]]
    problems += [f"broken image: {alt}" for alt in facts["brokenImages"]]
    if facts["docWidth"] > facts["viewport"]:
        problems.append(f"the page is {facts['docWidth']} px wide in a {facts['viewport']} px window")
    problems += [f"table wider than its box: {t}" for t in facts["overflowingTables"]]
    problems += [f"scroll box past the window: {b}" for b in facts["overflowingScrollBoxes"]]
    return problems + hook_problems(page_dir, facts["hooks"])


# ------------------------------------------------------------------------------------------------ the pages


def _regression_recipe(root: Path, model: Path) -> Path:
    """The news texts with a numeric target (words in the description): a regression run in a few steps."""
    df = make_news(160, seed=3)
    df["words"] = df["description"].str.split().str.len().astype(float)
    df.to_csv(root / "words.csv", index=False)
    path = write_recipe(root / "words.yaml", model, root / "words.csv", train={"max_steps": 4, "eval_every": 2})
    raw = yaml.safe_load(path.read_text())
    raw["task"] = "regression"
    raw["data"].pop("label")
    raw["data"]["target"] = "words"
    path.write_text(yaml.safe_dump(raw))
    return path


def _cv_parent(run: Path, parent: Path) -> Path:
    """A cross-validation parent as textune may write one: a summary beside folds/NAME/summary.json."""
    from textune.report.html import write_report

    shutil.copytree(run, parent, ignore=shutil.ignore_patterns("model", "checkpoints"))
    summary = json.loads((run / "summary.json").read_text())
    for k, acc in enumerate((0.8125, 0.78125, 0.84375)):
        fold = parent / "folds" / str(k)
        fold.mkdir(parents=True)
        validation = {**summary["validation"], "accuracy": acc, "f1_macro": acc - 0.0123456789}
        (fold / "summary.json").write_text(json.dumps({**summary, "validation": validation, "train_rows": 144 + k}))
    (parent / "folds" / "notes").mkdir()  # no summary.json: not a fold, left out
    write_report(parent)
    return parent


@pytest.fixture(scope="module")
def pages(tmp_path_factory, tiny_model) -> dict[str, Path]:
    """A tiny classification run with a TF-IDF baseline beside it, a regression run, a CV parent and a
    leaderboard of them all; trained once for the module."""
    import textune
    from textune.report.html import write_report

    root = tmp_path_factory.mktemp("browser")
    runs = root / "runs"
    for name, n, seed in (("train", 240, 0), ("test", 40, 2)):
        make_news(n, seed).to_csv(root / f"{name}.csv", index=False)
    recipe = write_recipe(
        root / "news.yaml",
        tiny_model,
        root / "train.csv",
        data={"test": str(root / "test.csv")},
        train={"max_steps": 6, "eval_every": 2},
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEXTUNE_CACHE", str(root / "cache"))
        run = textune.train(textune.load_recipe(recipe), out=runs / "news")
        assert main(["baseline", str(recipe), "--kind", "tfidf", "--out", str(runs)]) == 0
        reg = textune.train(textune.load_recipe(_regression_recipe(root, tiny_model)), out=root / "other" / "words")
    write_report(run)  # again, now that a baseline sits beside the run
    base = runs / "news-baseline-tfidf"
    cv = _cv_parent(run, runs / "news-cv")
    assert main(["compare", str(run), str(base), str(reg), str(cv), "--out", str(root / "board" / "leaderboard")]) == 0
    return {"run": run, "baseline": base, "regression": reg, "cv": cv, "compare": root / "board"}


# ------------------------------------------------------------------------------------------------ tests


def _assert_clean(facts: dict, page_dir: Path) -> None:
    problems = page_problems(facts, page_dir)
    assert not problems, "\n".join(problems)


def test_run_report_reads_well_and_matches_summary(browser, pages, tmp_path):
    run = pages["run"]
    facts = render(browser, run / "report.html", tmp_path / "run.png")
    _assert_clean(facts, run)
    summary = json.loads((run / "summary.json").read_text())
    keys = {h["key"] for h in facts["hooks"] if not h["run"]}
    # every metric of both splits, the parameter counts and the timings are on the page, hooked
    want = {f"{s}.{m}" for s in ("validation", "test") for m in summary[s]}
    want |= {"parameters.total", "parameters.trainable", "train_seconds", "train_rows", "validation_rows", "steps"}
    assert want <= keys, want - keys
    # the headline: the main metric, and the baseline beside the run with the difference
    baseline = [h for h in facts["hooks"] if h["run"] == "../news-baseline-tfidf"]
    assert [h["key"] for h in baseline] == ["validation.accuracy"]
    base_acc = json.loads((pages["baseline"] / "summary.json").read_text())["validation"]["accuracy"]
    assert f"{summary['validation']['accuracy'] - base_acc:+.4f}" in facts["text"]
    assert "higher is better" in facts["text"]
    # curves and confusion matrix inline, all decoded
    assert facts["images"] == len(list((run / "plots").rglob("*.png"))) == 3
    for section in ("Curves", "Errors on validation", "Per class (validation)", "True labels per evaluated split"):
        assert section in facts["text"]


def test_per_class_table_matches_the_predictions(browser, pages, tmp_path):
    from sklearn.metrics import precision_recall_fscore_support

    run = pages["run"]
    render(browser, run / "report.html", tmp_path / "run.png")
    rows = browser.execute_script(
        "const h = [...document.querySelectorAll('h3')].find(e => e.textContent === 'Per class (validation)');"
        "return [...h.parentElement.querySelectorAll('tbody tr')].map(r => [...r.cells].map(c => c.textContent));"
    )
    pred = pd.read_csv(run / "predictions" / "validation.csv")
    labels = json.loads((run / "task.json").read_text())["labels"]
    p, r, f1, n = precision_recall_fscore_support(pred["label"], pred["pred_label"], labels=labels, zero_division=0)
    want = [[lab, f"{p[i]:.4f}", f"{r[i]:.4f}", f"{f1[i]:.4f}", str(n[i])] for i, lab in enumerate(labels)]
    assert rows[: len(labels)] == want
    f1_macro = json.loads((run / "summary.json").read_text())["validation"]["f1_macro"]
    assert rows[-1][0] == "macro average" and rows[-1][3] == f"{f1_macro:.4f}"


def test_baseline_report(browser, pages, tmp_path):
    facts = render(browser, pages["baseline"] / "report.html", tmp_path / "baseline.png")
    _assert_clean(facts, pages["baseline"])
    assert {"validation.accuracy", "features", "wall_seconds"} <= {h["key"] for h in facts["hooks"]}
    assert facts["images"] == 1 and "Training, timing" not in facts["text"]


def test_regression_report_shows_residuals(browser, pages, tmp_path):
    reg = pages["regression"]
    facts = render(browser, reg / "report.html", tmp_path / "regression.png")
    _assert_clean(facts, reg)
    assert facts["images"] == 4  # loss, metrics, predicted vs true, residuals
    assert "lower is better" in facts["text"] and "Target words" in facts["text"]
    assert "none beside this run" in facts["text"]  # no baseline in its folder, and the page says how to add one


def test_cv_parent_lists_its_folds(browser, pages, tmp_path):
    cv = pages["cv"]
    facts = render(browser, cv / "report.html", tmp_path / "cv_parent.png")
    _assert_clean(facts, cv)
    folds = {h["run"] for h in facts["hooks"] if (h["run"] or "").startswith("folds/")}
    assert folds == {"folds/0", "folds/1", "folds/2"}
    mean = (0.8125 + 0.78125 + 0.84375) / 3
    assert "Folds" in facts["text"] and f"{mean:.4f}" in facts["text"]


def test_compare_page(browser, pages, tmp_path):
    board = pages["compare"]
    facts = render(browser, board / "leaderboard.html", tmp_path / "compare.png")
    _assert_clean(facts, board)
    table = pd.read_csv(board / "leaderboard.csv")
    values = [h for h in facts["hooks"] if h["key"].startswith("validation.")]
    # one value per leaderboard row, in the CSV's order (best first per task and metric), each from its own run
    assert [Path(h["run"]).name for h in values] == table["run"].tolist()
    assert [float(h["value"]) for h in values] == pytest.approx(table["value"].tolist(), abs=0)
    assert facts["images"] == 1 and "baseline" in facts["text"] and "lower is better" in facts["text"]


# ------------------------------------------------------------------------------------------------ the checks fail


BROKEN = """<!doctype html><html><head><meta charset='utf-8'></head><body style='margin:0'>
<script>console.error('deliberate error')</script>
<img alt='truncated png' src='data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAA'>
<div style='width:300px'><table><tr><td style='white-space:nowrap'>{wide}</td></tr></table></div>
<p><span data-metric='validation.accuracy' data-value='0.5'>0.5000</span>
<span data-metric='validation.f1_macro' data-value='0.25'>0.9999</span>
<span data-metric='validation.missing' data-value='1'>1</span></p>
</body></html>
"""


def test_the_checks_catch_a_broken_page(browser, tmp_path):
    """A page with each fault the checks look for: every one is reported (so a clean result means something)."""
    (tmp_path / "summary.json").write_text(json.dumps({"validation": {"accuracy": 0.75, "f1_macro": 0.25}}))
    page = tmp_path / "broken.html"
    page.write_text(BROKEN.format(wide="x" * 400))
    problems = page_problems(render(browser, page, tmp_path / "broken.png"), tmp_path)
    text = "\n".join(problems)
    assert "console:" in text and "deliberate error" in text
    assert "broken image: truncated png" in text
    assert "the page is" in text and "table wider than its box" in text
    assert "validation.accuracy" in text and "data-value 0.5 but summary.json has 0.75" in text
    assert "validation.f1_macro" in text and "shows '0.9999'" in text
    assert "validation.missing" in text
    assert len(problems) == 7, text


def test_shown_text_rounding():
    assert _shown_matches("0.9150", 0.91499999) and _shown_matches("1,011,492", 1011492)
    assert _shown_matches("1,685.2", 1685.2) and not _shown_matches("0.9150", 0.9160)
    assert not _shown_matches("-", math.nan)

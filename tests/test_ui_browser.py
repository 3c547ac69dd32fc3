"""The MLflow UI seen in a real browser: after real `harness train`, `harness sweep` and `harness
register` runs, `harness ui` serves pages that headless Chromium renders with every run's name, its
datasets and the registered model (benchmarks/ui_screenshots.py at small scale). Slow: not in CI."""

import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import ui_screenshots  # noqa: E402


@pytest.mark.slow
def test_ui_pages_render_runs_datasets_and_the_registered_model(tmp_path):
    if why := ui_screenshots.browser_missing():
        pytest.skip(why)
    work = tmp_path / "work"
    work.mkdir()
    store = ui_screenshots.make_store(work, [["name=ui_browser", "train.epochs=1"]], trials=1)
    names = {r.name for r in store.runs}
    datasets = {d for r in store.runs for d in r.datasets}
    assert len(store.runs) == 3 and len(datasets) == 3, [(r.name, r.datasets) for r in store.runs]
    trained = store.run(store.trained[0])

    ui = ui_screenshots.UI(work).start()
    try:
        browser = ui_screenshots.Browser(ui.url)
        try:
            table = ui_screenshots.runs_table(browser, store)
            text = table.inner_text("body")
            assert names <= set(_words(text, names)), text[:2000]
            assert all(d in text for d in datasets), text[:2000]
            ui_screenshots.shoot(table, tmp_path / "runs.png")
            charts = ui_screenshots.charts(table, store, ["train", "val", "test"], ui_screenshots.CHARTS_SEARCH)
            assert any(f"{split}/" in charts.inner_text("body") for split in ("train", "val", "test"))

            run = ui_screenshots.run_page(browser, store, trained)
            text = run.inner_text("body")
            assert trained.name in text and trained.datasets[0] in text, text[:2000]
            if trained.description:
                assert ui_screenshots.description_start(trained, 4) in text, text[:2000]
            ui_screenshots.shoot(ui_screenshots.run_report(browser, store, trained), tmp_path / "run-report.png")

            model = ui_screenshots.model_page(browser, store)
            text = model.inner_text("body")
            assert store.model in text and ui_screenshots.ALIAS in text, text[:2000]
        finally:
            browser.close()
    finally:
        left = ui.stop()
    assert left == [], f"harness ui left processes after SIGTERM: {left}"
    assert all((tmp_path / f).stat().st_size > 10_000 for f in ("runs.png", "run-report.png"))


def _words(text: str, wanted: set[str]) -> list[str]:
    """The wanted names that appear in ``text`` as whole lines (how the table shows run names)."""
    lines = {line.strip() for line in text.splitlines()}
    return [w for w in wanted if w in lines]

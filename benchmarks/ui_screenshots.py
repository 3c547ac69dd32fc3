"""Screenshots of the MLflow UI over real harness runs, for docs/ui.md.

    python benchmarks/ui_screenshots.py [--out docs/screenshots] [--chromium PATH] [--keep]

In a fresh temporary folder (its own ./mlflow.db and ./mlruns) it makes real runs with the harness's
own commands: two `harness train experiments/smoke.yaml` runs with different options, a two-trial
`harness sweep` and `harness register RUN --name svhn-reader --alias champion` on the first run. Then
it starts `harness ui` on that store, opens it in headless Chromium (Playwright) and saves:

    runs.png          the experiment's runs table, sweep expanded, with the Dataset column
    charts.png        the chart view of the runs, one section per metric prefix (train/ val/ test/ ...)
    run.png           a run's page: its description, metrics, datasets and tags
    run-report.png    the same run's artifacts, with its HTML report open in the viewer
    model.png         the registered model svhn-reader with its champion alias

It shoots whatever the UI shows (no metric names are assumed), stops the UI with SIGTERM (the harness
stops its server's whole process group) and removes the temporary folder (unless --keep). Needs
`pip install playwright` and a Chromium: Debian's (`apt-get install chromium`) or `playwright install
chromium`. On a 2-core CPU it takes about three minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "experiments" / "smoke.yaml"
MODEL_NAME, ALIAS = "svhn-reader", "champion"
VIEWPORT = {"width": 1600, "height": 1000}
CHARTS_VIEWPORT = {"width": 1600, "height": 1600}
# The chart view shows the headline accuracy and the loss of each split side by side; every chart when
# no split has them (a regular expression over metric names, as the UI's chart search takes it).
CHARTS_SEARCH = r"sequence_accuracy$|/loss$"
TIMEOUT_MS = 60_000  # the longest any page may take to show what is waited for

# The MLflow UI's first-visit prompts (workflow chooser, telemetry notice, assistant panel) answered
# in advance, so every page opens on the model-training view with nothing over it.
UI_PREFERENCES = {
    "mlflow.workflowType_v1": '"machine_learning"',
    "mlflow.telemetry.info.alert.dismissed_v1": "true",
    "mlflow.assistant.panelOpen_v1": "false",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
}


class Failed(Exception):
    """One line that says what went wrong."""


@dataclass
class Run:
    run_id: str
    name: str
    datasets: list[str]  # names of its dataset inputs
    description: str = ""
    parent: str = ""  # the sweep's run id, for a trial
    artifacts: list[str] = field(default_factory=list)  # top-level artifact paths
    metrics: list[str] = field(default_factory=list)  # names of its metrics


@dataclass
class Store:
    work: Path
    experiment_id: str
    runs: list[Run]
    trained: list[str]  # run ids of the `harness train` runs, in order
    model: str  # registered model name

    def run(self, run_id: str) -> Run:
        return next(r for r in self.runs if r.run_id == run_id)


# ------------------------------------------------------------------------------ the runs

def harness_env() -> dict[str, str]:
    """This environment without MLflow or KerasTuner settings: the runs go to ./mlflow.db of the folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KERASTUNER_"))}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def harness(work: Path, *args: str) -> str:
    """Run ``harness ARGS`` in ``work``; its output goes to work/harness.log. Returns the output."""
    log = work / "harness.log"
    with open(log, "a") as out:
        out.write(f"\n$ harness {' '.join(args)}\n")
        start = out.tell()
        out.flush()
        result = subprocess.run([sys.executable, "-m", "harness", *args], check=False, cwd=work, env=harness_env(),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    with open(log) as f:
        f.seek(start)
        text = f.read()
    if result.returncode != 0:
        last = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "(no output)")
        raise Failed(f"`harness {' '.join(args)}` exited {result.returncode}: {last.strip()}")
    return text


def sweep_file(work: Path, trials: int) -> Path:
    path = work / "ui_sweep.yaml"
    path.write_text(textwrap.dedent(f"""\
        # Run:    harness sweep ui_sweep.yaml
        # Expect: {trials} one-epoch trials of the smoke experiment nested under one parent run.
        base: {SMOKE}
        name: ui_sweep
        sweep:
          tuner: random
          max_trials: {trials}
          seed: 1
          space:
            augment.policy: [none, paper, jitter]
            train.learning_rate: {{min: 1.0e-3, max: 5.0e-3, log: true}}
        """))
    return path


def make_store(work: Path, trainings: list[list[str]], trials: int) -> Store:
    """The runs: one `harness train` of the smoke experiment per override list, a sweep of ``trials``
    trials (none when 0), and the first training's model registered as MODEL_NAME@ALIAS."""
    trained = []
    for overrides in trainings:
        before = _top_level_runs(work)
        harness(work, "train", str(SMOKE), *[a for o in overrides for a in ("--set", o)])
        new = _top_level_runs(work) - before
        if len(new) != 1:
            raise Failed(f"`harness train` with {overrides} made {len(new)} top-level runs, not one")
        trained.append(new.pop())
    if trials:
        harness(work, "sweep", str(sweep_file(work, trials)))
    harness(work, "register", trained[0], "--name", MODEL_NAME, "--alias", ALIAS)
    return read_store(work, trained)


def _client(work: Path):
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")


def _top_level_runs(work: Path) -> set[str]:
    if not (work / "mlflow.db").exists():
        return set()
    client = _client(work)
    ids = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_id for r in client.search_runs(ids, max_results=1000)
            if "mlflow.parentRunId" not in r.data.tags}


def read_store(work: Path, trained: list[str]) -> Store:
    client = _client(work)
    experiment_id = client.get_run(trained[0]).info.experiment_id
    runs = []
    for r in client.search_runs([experiment_id], max_results=1000):
        runs.append(Run(run_id=r.info.run_id, name=r.info.run_name,
                        datasets=[d.dataset.name for d in (r.inputs.dataset_inputs if r.inputs else [])],
                        description=r.data.tags.get("mlflow.note.content", ""),
                        parent=r.data.tags.get("mlflow.parentRunId", ""),
                        artifacts=[a.path for a in client.list_artifacts(r.info.run_id)],
                        metrics=sorted(r.data.metrics)))
    return Store(work=work, experiment_id=experiment_id, runs=runs, trained=trained, model=MODEL_NAME)


def report_artifact(store: Store, run_id: str) -> str:
    """The run's HTML report artifact (else its markdown report, else "")."""
    client = _client(store.work)
    for folder in ("report", ""):
        found = [a.path for a in client.list_artifacts(run_id, folder or None) if not a.is_dir]
        for suffix in (".html", ".md"):
            match = sorted(p for p in found if p.endswith(suffix) and "report" in p)
            if match:
                return match[0]
    return ""


# ------------------------------------------------------------------------------ the UI

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UI:
    """`harness ui` on the folder's store; ``stop()`` sends SIGTERM to the harness process alone, as
    `kill PID` does, and checks that nothing it started is left."""

    def __init__(self, work: Path, port: int | None = None):
        self.work, self.port = work, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / "ui.log"
        self.proc: subprocess.Popen | None = None
        self.children: set[int] = set()

    def start(self, timeout: float = 180) -> UI:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "harness", "ui", "--port", str(self.port)],
                                         cwd=self.work, env=harness_env(), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise Failed(f"`harness ui` exited {self.proc.returncode}: {self._last_line()}")
            self.children |= descendants(self.proc.pid)
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as answer:
                    if answer.status == 200:
                        self.children |= descendants(self.proc.pid)
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        raise Failed(f"`harness ui` did not answer on {self.url} within {timeout:.0f} s: {self._last_line()}")

    def stop(self) -> list[int]:
        """Stop the UI; returns the processes it left behind (then killed here)."""
        if self.proc is None:
            return []
        self.children |= descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.time() + 15
        while alive(self.children) and time.time() < deadline:
            time.sleep(0.2)
        left = sorted(alive(self.children))
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left

    def _last_line(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "(no output)")


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc), whatever its process group or session."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (not gone, not zombies)."""
    running = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            running.add(pid)
    return running


# ------------------------------------------------------------------------------ the browser

def find_chromium(given: str | None = None) -> str | None:
    """A Chromium executable: ``given``, $CHROMIUM, or one on PATH; None lets Playwright use its own."""
    for candidate in (given, os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


def browser_missing(chromium: str | None = None) -> str:
    """Why no browser can be driven here ("" when one can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install playwright)"
    if find_chromium(chromium) is None and not _playwright_chromium():
        return "no Chromium found (apt-get install chromium, or playwright install chromium)"
    return ""


def _playwright_chromium() -> bool:
    root = Path(os.environ.get("PLAYWRIGHT_BROWSERS_PATH") or Path.home() / ".cache" / "ms-playwright")
    return any(root.glob("chromium*/chrome-linux*/chrome"))


class Browser:
    """Headless Chromium on the UI, with the UI's first-visit prompts answered."""

    def __init__(self, base_url: str, chromium: str | None = None):
        from playwright.sync_api import sync_playwright

        self.base_url = base_url
        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(executable_path=find_chromium(chromium))
        except Exception:
            self._playwright.stop()
            raise
        context = self._browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(TIMEOUT_MS)
        context.add_init_script("".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});"
                                        for k, v in UI_PREFERENCES.items()))
        self.page = context.new_page()

    def open(self, route: str):
        self.page.goto(f"{self.base_url}/#/{route}")
        return self.page

    def close(self) -> None:
        self._browser.close()
        self._playwright.stop()


def visible(page, text: str) -> None:
    """Wait until ``text`` shows on the page (its first visible occurrence)."""
    page.get_by_text(text, exact=False).locator("visible=true").first.wait_for()


def settle(page) -> None:
    """Let requests finish and charts draw (bounded: the UI may poll)."""
    from playwright.sync_api import TimeoutError as PageTimeout

    with contextlib.suppress(PageTimeout):
        page.wait_for_load_state("networkidle", timeout=10_000)
    page.wait_for_timeout(500)  # the last paint after data arrived


def runs_table(browser: Browser, store: Store):
    """The experiment's runs table, every sweep expanded and rows tall enough for all datasets."""
    page = browser.open(f"experiments/{store.experiment_id}/runs")
    for run in store.runs:
        if not run.parent:
            visible(page, run.name)
    # a sweep's trials are folded under its parent run (the UI remembers which): unfold the folded ones
    for parent in {r.parent for r in store.runs if r.parent}:
        trials = [r.name for r in store.runs if r.parent == parent]
        if not page.get_by_text(trials[0], exact=True).locator("visible=true").count():
            row = page.locator('[role="row"]').filter(has=page.locator(f'a[href$="/runs/{parent}"]'))
            row.locator('button[data-component-id*="runnamecellrenderer"]').first.click()
        for name in trials:
            visible(page, name)
    page.get_by_text("Expand rows", exact=True).click()  # every dataset of a run, not the first alone
    for run in store.runs:
        for name in run.datasets:
            visible(page, name)
    settle(page)
    return page


def charts(page, store: Store, sections: list[str], search: str = ""):
    """The chart view of the runs, switched to from the runs table ``page`` (so what it unfolded stays
    unfolded). Where sections named in ``sections`` exist, the others are folded so those come first.
    ``search`` goes into the UI's chart search (a regular expression over metric names) when charts of
    at least two of those sections match it; otherwise every chart stays."""
    page.locator('label:has(input[value="CHART"])').click()
    header = '[data-testid="experiment-view-compare-runs-section-header"]'
    toggles = page.locator(f".du-bois-light-collapse-header:has({header})")
    toggles.first.wait_for()
    page.locator(".js-plotly-plot, canvas").first.wait_for()
    if search:
        pattern = re.compile(search, re.IGNORECASE)
        metrics = {m for r in store.runs for m in r.metrics}
        matched = {s for s in sections if any(pattern.search(m) for m in metrics if m.startswith(f"{s}/"))}
        if len(matched) >= 2:
            page.get_by_placeholder("Search metric charts").fill(search)
            page.wait_for_function(f"(t => t.length > 0 && t.every(m => new RegExp({json.dumps(search)}, 'i').test(m)))"
                                   f"(({_CHART_TITLES})())")
    names = [toggles.nth(i).locator(header).inner_text().split("\n")[0].strip() for i in range(toggles.count())]
    if any(n in sections for n in names):
        for i, name in enumerate(names):
            if name not in sections and toggles.nth(i).get_attribute("aria-expanded") == "true":
                toggles.nth(i).click()
    # folding scrolls the charts' pane: back to its first section
    toggles.first.evaluate("el => el.scrollIntoView({block: 'start'})")
    page.mouse.move(0, 0)  # no hover tooltip over a chart
    settle(page)
    return page


# the titles of the charts on the page (each chart card's title is its metric's name)
_CHART_TITLES = """() => Array.from(document.querySelectorAll('[data-testid="experiment-view-compare-runs-card"]'))
.map(c => (c.innerText || '').split('\\n')[0].trim())"""


def description_start(run: Run, words: int) -> str:
    """The first ``words`` words of the run's description, as its markdown renders them."""
    first = next((ln for ln in run.description.splitlines() if ln.strip()), "")
    return " ".join(first.replace("*", "").replace("`", "").split()[:words])


def run_page(browser: Browser, store: Store, run: Run):
    page = browser.open(f"experiments/{store.experiment_id}/runs/{run.run_id}")
    visible(page, run.name)
    if run.description:
        visible(page, description_start(run, 2))
    for name in run.datasets[:1]:
        visible(page, name)
    settle(page)
    return page


def run_report(browser: Browser, store: Store, run: Run):
    path = report_artifact(store, run.run_id)
    route = f"experiments/{store.experiment_id}/runs/{run.run_id}/artifacts" + (f"/{path}" if path else "")
    page = browser.open(route)
    visible(page, run.name)
    if path:
        visible(page, path)  # the viewer's title
        frame = page.locator("iframe").first
        if path.endswith(".html") and frame.count():
            frame.wait_for()
            frame.content_frame.locator("body").wait_for()
    settle(page)
    return page


def model_page(browser: Browser, store: Store):
    page = browser.open(f"models/{store.model}")
    visible(page, store.model)
    visible(page, ALIAS)
    settle(page)
    return page


def shoot(page, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    return path


def screenshots(store: Store, out: Path, chromium: str | None = None, port: int | None = None,
                sections: tuple[str, ...] = ("train", "val", "test"), charts_search: str = "") -> list[Path]:
    """Start `harness ui` on the store, shoot its pages into ``out``, stop it. Returns the files."""
    shown = store.run(store.trained[0])
    ui = UI(store.work, port).start()
    written, left = [], []
    try:
        browser = Browser(ui.url, chromium)
        try:
            table = runs_table(browser, store)
            written.append(shoot(table, out / "runs.png"))
            table.set_viewport_size(CHARTS_VIEWPORT)  # room for more than one section
            written.append(shoot(charts(table, store, list(sections), charts_search), out / "charts.png"))
            table.set_viewport_size(VIEWPORT)
            written.append(shoot(run_page(browser, store, shown), out / "run.png"))
            written.append(shoot(run_report(browser, store, shown), out / "run-report.png"))
            written.append(shoot(model_page(browser, store), out / "model.png"))
        finally:
            browser.close()
    finally:
        left = ui.stop()
    if left:
        raise Failed(f"`harness ui` left {len(left)} process(es) running after SIGTERM: {left} (killed)")
    return written


# ------------------------------------------------------------------------------ main

TRAININGS = [  # different options, so the runs differ in data, augmentation and curves
    ["name=smoke", "train.epochs=2"],
    ["name=smoke_jitter", "augment.policy=jitter", "data.options.train=400", "train.epochs=2"],
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots", help="where the PNGs go")
    parser.add_argument("--chromium", help="Chromium executable (default: chromium on PATH, else Playwright's)")
    parser.add_argument("--trials", type=int, default=2, help="sweep trials (default: 2)")
    parser.add_argument("--port", type=int, help="port for harness ui (default: a free one)")
    parser.add_argument("--charts-search", default=CHARTS_SEARCH, metavar="REGEX",
                        help="the chart view's search, applied when it matches charts of two splits or more "
                             f"('' shows every chart; default: {CHARTS_SEARCH!r})")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = parser.parse_args(argv)
    if why := browser_missing(args.chromium):
        print(f"ui_screenshots: {why}", file=sys.stderr)
        return 2
    from playwright.sync_api import Error as PageError

    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="ui-screenshots-"))
    try:
        store = make_store(work, TRAININGS, args.trials)
        made = time.perf_counter() - start
        written = screenshots(store, args.out.resolve(), args.chromium, args.port, charts_search=args.charts_search)
    except Failed as e:
        print(f"ui_screenshots: {e}", file=sys.stderr)
        return 1
    except (PageError, OSError) as e:  # a page that never showed what was waited for, a browser that did not start
        message = " ".join(str(e).split())
        print(f"ui_screenshots: {type(e).__name__}: {message[:300]}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    trainings = sum(1 for r in store.runs if not r.parent) - (1 if args.trials else 0)
    print(f"{trainings} training runs, a {args.trials}-trial sweep and {MODEL_NAME}@{ALIAS} in {made:.0f} s; "
          f"screenshots in {time.perf_counter() - start - made:.0f} s:")
    for path in written:
        print(f"  {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

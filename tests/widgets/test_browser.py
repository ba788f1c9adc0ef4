"""End to end in a real browser: JupyterLab runs the quickstart notebook (small parameters) and Chromium, driven by
Playwright, checks what the widgets show and that they answer the user (slider, click on a point).

Nothing of the user is touched: JupyterLab, its kernel (this venv's ``python3`` kernelspec) and Chromium run with
HOME, Jupyter and browser-profile folders in a temporary directory, on 127.0.0.1 with a random port and token, and
nothing reaches the network (no news, no update check, no browser background traffic). All three are stopped at
the end, also when the test fails. Screenshots go to ``test-artifacts/browser/`` (git-ignored).

Skipped (with the reason) only where no Chromium binary is found; Playwright's own browser download is not used.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
NOTEBOOK = "00_quickstart.ipynb"
N_EVAL = 500  # test images the quickstart shows in the embedding (one point each)
PARAMETERS = {"epochs": 1, "n_images": 1000, "n_eval": N_EVAL, "batch_size": 128, "umap": "off",
              "backbone_options": {"width": 16}}
RUN_ALL_TIMEOUT = 240.0  # seconds for "Run All Cells" (about a minute of kernel CPU on a 2-core machine)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-default-apps",
                 "--disable-extensions", "--no-default-browser-check",
                 "--enable-unsafe-swiftshader"]  # software WebGL for plotly's scattergl without a GPU

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def chromium_binary() -> str | None:
    """The system Chromium: /usr/bin/chromium, else ``chromium`` or ``chromium-browser`` on PATH."""
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


# ---------------------------------------------------------------------------------------------------- JupyterLab
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server in a temporary folder: ``url``, ``token``, ``root`` (its notebook folder), ``api()``."""

    def __init__(self, base: Path):
        self.base = base
        self.root = base / "notebooks"
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "jupyterlab.log"
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        b = self.base
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_", "WORKBENCH_"))}
        env.update(HOME=str(b / "home"), XDG_CONFIG_HOME=str(b / "home" / ".config"),
                   XDG_CACHE_HOME=str(b / "home" / ".cache"), XDG_DATA_HOME=str(b / "home" / ".local" / "share"),
                   JUPYTER_CONFIG_DIR=str(b / "jupyter" / "config"), JUPYTER_DATA_DIR=str(b / "jupyter" / "data"),
                   JUPYTER_RUNTIME_DIR=str(b / "jupyter" / "runtime"), IPYTHONDIR=str(b / "ipython"),
                   JUPYTERLAB_SETTINGS_DIR=str(b / "lab" / "user-settings"),
                   JUPYTERLAB_WORKSPACES_DIR=str(b / "lab" / "workspaces"),
                   MPLCONFIGDIR=str(b / "home" / ".config" / "matplotlib"),
                   WORKBENCH_RUNS_DIR=str(b / "runs"), PYTHONUNBUFFERED="1")
        return env

    def kernelspecs(self) -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"], env=self.env(),
                             capture_output=True, text=True, timeout=60, check=True).stdout
        return json.loads(out)["kernelspecs"]

    def prepare(self) -> None:
        """Copy notebooks/ and write settings that keep JupyterLab quiet and deterministic."""
        shutil.copytree(NOTEBOOKS, self.root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        for d in ("home", "jupyter/config", "jupyter/data", "jupyter/runtime", "ipython", "runs"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        settings = self.base / "lab" / "user-settings"
        for plugin, values in {
            "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
            # every cell stays in the DOM (no virtual scrolling), so the test sees all outputs
            "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        }.items():
            f = settings / f"{plugin}.jupyterlab-settings"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(values))
        path = self.root / NOTEBOOK
        nb = nbformat.read(str(path), as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        values = {**PARAMETERS, "runs_dir": str(self.base / "runs")}
        names = [line.split("=")[0].strip() for line in cell.source.splitlines() if "=" in line]
        assert set(values) <= set(names), f"parameters cell of {NOTEBOOK} lacks {set(values) - set(names)}"
        lines = []
        for line in cell.source.splitlines():
            name = line.split("=")[0].strip() if "=" in line else None
            lines.append(f"{name} = {values[name]!r}" if name in values else line)
        cell.source = "\n".join(lines)
        nbformat.write(nb, str(path))

    def start(self, timeout: float = 90.0, attempts: int = 3) -> None:
        """Start the server and wait until its API answers (a new random port when the port was taken meanwhile)."""
        for attempt in range(attempts):
            if attempt:
                self.port = _free_port()
                self.url = f"http://127.0.0.1:{self.port}"
            cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                   f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
                   f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
                   "--ServerApp.allow_root=True",  # CI runs as root
                   "--ServerApp.terminals_enabled=False",
                   # nothing from the network: no news feed, no update check, no PyPI extension manager
                   "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
                   "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
                   f"--LabApp.user_settings_dir={self.base / 'lab' / 'user-settings'}",
                   f"--LabApp.workspaces_dir={self.base / 'lab' / 'workspaces'}",
                   "--MappingKernelManager.default_kernel_name=python3"]
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(cmd, cwd=self.root, env=self.env(), stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                with contextlib.suppress(OSError, ValueError):
                    if "started" in self.api("GET", "/api/status", timeout=5):
                        return
                time.sleep(0.5)
            if self.proc.poll() is None:
                raise RuntimeError(f"JupyterLab did not answer on {self.url} within {timeout:.0f} s:\n{self.log()}")
            if "already in use" not in self.log():
                break
        raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log()}")

    def api(self, method: str, path: str, timeout: float = 10.0) -> Any:
        req = urllib.request.Request(self.url + path, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    @staticmethod
    def _processes() -> dict[int, tuple[int, str]]:
        """pid -> (parent pid, start time) of every process (from /proc)."""
        out = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                out[int(stat.parent.name)] = (int(fields[1]), fields[19])
        return out

    def _descendants(self) -> dict[int, str]:
        """pid -> start time of every process below the server (kernels run in sessions of their own)."""
        if self.proc is None or self.proc.poll() is not None:
            return {}
        procs = self._processes()
        out, todo = {}, [self.proc.pid]
        while todo:
            parent = todo.pop()
            for pid, (ppid, started) in procs.items():
                if ppid == parent and pid not in out:
                    out[pid] = started
                    todo.append(pid)
        return out

    def stop(self) -> None:
        """Shut down the kernels through the API, then the server; kill by pid whatever outlived that."""
        if self.proc is None:
            return
        below = self._descendants()
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                for k in self.api("GET", "/api/kernels"):
                    with contextlib.suppress(Exception):
                        self.api("DELETE", f"/api/kernels/{k['id']}", timeout=30)
            with contextlib.suppress(Exception):
                self.api("POST", "/api/shutdown")
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:  # not reaped yet, so its process group is still ours
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, sig)
                    try:
                        self.proc.wait(10)
                        break
                    except subprocess.TimeoutExpired:
                        pass
        time.sleep(0.5)
        procs = self._processes()
        for pid, started in below.items():  # a kernel that outlived the shutdown (same pid and start time)
            if procs.get(pid, (None, None))[1] == started:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = chromium_binary()
    if path is None:
        pytest.skip("no Chromium binary (/usr/bin/chromium, `chromium` or `chromium-browser` on PATH); "
                    "scripts/setup.sh installs Debian's chromium where apt-get is usable as root")
    return path


@pytest.fixture(scope="module")
def lab(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("lab"))
    lab.prepare()
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="module")
def browser_page(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    base = tmp_path_factory.mktemp("chromium")
    home = base / "home"  # Chromium writes a few things under HOME (.pki, .cache) besides its profile
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache")}
    with sync_playwright() as pw:
        # launch() refuses --user-data-dir; a persistent context is Playwright's way to name the profile folder.
        # The viewport is tall so that a whole widget (the augmentation grid is ~2100 px) fits in one screenshot.
        context = pw.chromium.launch_persistent_context(
            str(base / "profile"), executable_path=chromium, headless=True, args=CHROMIUM_ARGS, env=env,
            viewport={"width": 1400, "height": 2600}, service_workers="block")
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            context.close()


# ---------------------------------------------------------------------------------------------------- page helpers
STATE_JS = """() => {
  const cells = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')];
  const prompts = cells.map(c => (c.querySelector('.jp-InputPrompt') || {}).textContent || '');
  const errors = [];
  for (const o of document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')) {
    if (/Traceback/.test(o.textContent)) errors.push(o.textContent.slice(0, 3000));
  }
  for (const o of document.querySelectorAll('.jp-OutputArea-output')) {
    if (o.textContent.includes('Error displaying widget')) errors.push(o.textContent.slice(0, 3000));
  }
  for (const o of document.querySelectorAll('.wb-error')) {
    if (o.textContent.trim()) errors.push('widget error area: ' + o.textContent.trim());
  }
  const dialog = document.querySelector('.jp-Dialog');
  return {prompts, errors, dialog: dialog ? dialog.textContent.trim().slice(0, 500) : null};
}"""


BROKEN_IMAGES_JS = """() => [...document.querySelectorAll('.jp-OutputArea-output img')]
  .filter(i => i.complete && i.naturalWidth === 0 && i.getClientRects().length
               && getComputedStyle(i).visibility !== 'hidden')
  .map(i => (i.closest('[class*="wb-"]') || i).className + ' src=' + (i.getAttribute('src') || '').slice(0, 60))"""


def _sha(page: Any, selector: str) -> dict[str, Any]:
    """src, decoded size and SHA-256 of the bytes of the image ``selector`` (a blob: or data: URL)."""
    return page.evaluate("""async (sel) => {
      const img = document.querySelector(sel);
      if (!img || !img.src) return {src: null};
      const buf = await (await fetch(img.src)).arrayBuffer();
      const hash = [...new Uint8Array(await crypto.subtle.digest('SHA-256', buf))]
        .map(b => b.toString(16).padStart(2, '0')).join('');
      return {src: img.src, width: img.naturalWidth, height: img.naturalHeight, bytes: buf.byteLength, hash};
    }""", selector)


def _wait(page: Any, predicate: str, arg: Any = None, timeout: float = 60.0, what: str = "") -> None:
    try:
        page.wait_for_function(predicate, arg=arg, timeout=timeout * 1000, polling=250)
    except Exception as e:
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or predicate}") from e


def _run_all(page: Any) -> None:
    """Run > Run All Cells from the menu bar."""
    page.locator(".lm-MenuBar-itemLabel").filter(has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-item:visible .lm-Menu-itemLabel").filter(has_text=re.compile(r"^Run All Cells$")).click()


def _wait_kernel(page: Any, lab: Lab, timeout: float) -> None:
    """Until the notebook is connected to its (idle) python3 kernel: before that the toolbar says "No Kernel" and
    its status indicator already reads idle, and Run All would open the Select Kernel dialog."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = page.evaluate("""() => {
          const n = document.querySelector('.jp-NotebookPanel-toolbar .jp-KernelName');
          const s = document.querySelector('.jp-Notebook-ExecutionIndicator');
          return {name: n ? n.textContent.trim() : '', status: s ? s.getAttribute('data-status') : ''};
        }""")
        kernels = lab.api("GET", "/api/kernels")
        if (shown["name"] not in ("", "No Kernel") and shown["status"] == "idle" and len(kernels) == 1
                and kernels[0]["name"] == "python3" and kernels[0]["execution_state"] == "idle"
                and kernels[0]["connections"] >= 1):
            return
        time.sleep(0.5)
    raise AssertionError(f"the notebook's kernel did not start within {timeout:.0f} s (toolbar: {shown}, "
                         f"kernels: {kernels})\nserver log:\n{lab.log()}")


def _wait_executed(page: Any, lab: Lab, timeout: float) -> dict[str, Any]:
    """Until every code cell shows an execution count and the kernel is idle (or an error shows up)."""
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = page.evaluate(STATE_JS)
        if state["errors"]:
            return state
        if state["dialog"]:
            raise AssertionError(f"JupyterLab opened a dialog while running the notebook: {state['dialog']!r}")
        if state["prompts"] and all(re.fullmatch(r"\[\d+\]:", p.strip()) for p in state["prompts"]):
            kernels = lab.api("GET", "/api/kernels")
            if kernels and all(k["execution_state"] == "idle" for k in kernels):
                return state
        time.sleep(1.0)
    raise AssertionError(f"the notebook did not finish within {timeout:.0f} s; prompts: {state.get('prompts')}\n"
                         f"server log:\n{lab.log()}")


def _console_log(page: Any) -> list[str]:
    """The page's console errors and warnings and its uncaught errors, as they arrive ("type: text")."""
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    return console


@contextlib.contextmanager
def _reporting_failure(page: Any, lab: Lab, console: list[str], shot: Path) -> Iterator[None]:
    """On any failure inside: a full-page screenshot at ``shot``, the last browser console lines and JupyterLab's
    log are printed with it (the failure itself is re-raised)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
        if console:
            print("browser console:\n" + "\n".join(console[-40:]))
        print("JupyterLab log:\n" + lab.log())
        raise


def _no_console_errors(console: list[str]) -> None:
    problems = [m for m in console if m.startswith(("error:", "pageerror:"))]
    assert not problems, "errors in the browser console:\n" + "\n".join(problems)


def _shot(page: Any, selector: str, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.mouse.move(1, 1)  # no hover label over the picture
    page.wait_for_timeout(300)
    el = page.locator(selector).first
    el.scroll_into_view_if_needed()
    el.screenshot(path=str(ARTIFACTS / name))


# ---------------------------------------------------------------------------------------------------- the test
@pytest.mark.timeout(420)
def test_quickstart_widgets_in_jupyterlab(lab: Lab, browser_page: Any) -> None:
    page = browser_page
    specs = lab.kernelspecs()  # the notebook's kernel: this venv's python3 kernelspec (not one of the user's)
    assert "python3" in specs, specs
    assert Path(specs["python3"]["resource_dir"]).resolve().is_relative_to(Path(sys.prefix).resolve()), specs

    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    t0 = time.monotonic()
    console = _console_log(page)
    page.goto(f"{lab.url}/lab/tree/{NOTEBOOK}?token={lab.token}", timeout=90_000)
    with _reporting_failure(page, lab, console, ARTIFACTS / "failure.png"):
        _wait(page, """() => document.querySelectorAll('.jp-Notebook .jp-CodeCell').length > 0""", timeout=90,
              what="the notebook to open")
        _wait_kernel(page, lab, timeout=90)
        _run_all(page)
        state = _wait_executed(page, lab, RUN_ALL_TIMEOUT)
        print(f"\nnotebook executed in JupyterLab in {time.monotonic() - t0:.0f} s")
        assert not state["errors"], "error in the notebook's outputs:\n" + "\n---\n".join(state["errors"])
        # a widget whose JavaScript module is missing or of another version: jupyterlab_widgets logs the error
        # here and shows the widget's text repr instead ("Error displaying widget" only in some versions)
        _no_console_errors(console)
        page.wait_for_timeout(1000)  # images decode
        assert not page.evaluate(BROKEN_IMAGES_JS), page.evaluate(BROKEN_IMAGES_JS)  # shown as a broken-image icon
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "00-notebook.png"))

        # (a) AugmentationExplorer: the grid is an image, and it changes when a slider is dragged
        grid = ".wb-augmentation-explorer img.wb-augmentation-grid"
        _wait(page, f"() => {{ const i = document.querySelector({grid!r}); "
                    "return i && i.complete && i.naturalWidth > 0; }", what="the augmentation grid image")
        before = _sha(page, grid)
        assert before["bytes"] > 1000 and before["width"] >= 96, before
        _shot(page, ".wb-augmentation-explorer", "01-augmentations.png")
        slider = page.locator(".wb-augmentation-explorer .wb-slider-solarize_p")
        slider.scroll_into_view_if_needed()
        handle = slider.locator(".noUi-handle").first.bounding_box()
        track = slider.locator(".noUi-target").first.bounding_box()
        assert handle and track, "solarize_p slider not found"
        page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
        page.mouse.down()
        page.mouse.move(track["x"] + track["width"] + 20, track["y"] + track["height"] / 2, steps=8)
        page.mouse.up()
        readout = slider.locator(".widget-readout").first
        assert float(readout.text_content()) == pytest.approx(1.0), readout.text_content()
        _wait(page, f"(src) => {{ const i = document.querySelector({grid!r}); "
                    "return i && i.src !== src && i.complete && i.naturalWidth > 0; }", arg=before["src"],
              what="the augmentation grid to change after the slider moved")
        after = _sha(page, grid)
        assert after["hash"] != before["hash"], (before, after)
        _shot(page, ".wb-augmentation-explorer", "02-augmentations-solarized.png")

        # the TrainingMonitor's curves (plotly FigureWidget, an anywidget): drawn from the run's records
        curves = ".wb-training-monitor .js-plotly-plot"
        _wait(page, f"() => {{ const g = document.querySelector({curves!r}); "
                    "return g && g.data && g.data.length >= 1 && g.data[0].x && g.data[0].x.length > 0 "
                    "&& g.querySelectorAll('.scatterlayer .trace').length > 0; }", what="the training curves")
        _shot(page, ".wb-training-monitor", "03-training.png")

        # (b) EmbeddingExplorer: one WebGL point per test image; clicking one shows its neighbours
        plot = ".wb-embedding-explorer .js-plotly-plot.wb-embedding-plot"  # the FigureWidget's element is the graph
        _wait(page, f"() => {{ const g = document.querySelector({plot!r}); "
                    "return g && g.data && g.data.length && g._fullLayout && g.querySelector('canvas'); }",
              what="the embedding plot")
        info = page.evaluate(f"""() => {{
          const g = document.querySelector({plot!r}), t = g.data[0];
          return {{type: t.type, n: t.x.length, ny: t.y.length, glcanvas: g.querySelectorAll('canvas.gl-canvas').length}};
        }}""")
        assert info["type"] == "scattergl" and info["n"] == info["ny"] == N_EVAL, info
        assert info["glcanvas"] >= 1, info  # WebGL (not the SVG fallback)
        _shot(page, ".wb-embedding-explorer", "04-embedding.png")
        gallery = ".wb-embedding-explorer .wb-embedding-gallery"
        assert page.locator(f"{gallery} img").count() == 0
        page.locator(plot).scroll_into_view_if_needed()
        target = page.evaluate(f"""() => {{  // the point farthest from any other (in page pixels): unambiguous
          const g = document.querySelector({plot!r}), t = g.data[0], xa = g._fullLayout.xaxis, ya = g._fullLayout.yaxis;
          const r = g.getBoundingClientRect();
          const px = Array.from(t.x, v => r.left + xa._offset + xa.l2p(v));
          const py = Array.from(t.y, v => r.top + ya._offset + ya.l2p(v));
          let best = 0, bestGap = -1;
          for (let i = 0; i < px.length; i++) {{
            let gap = Infinity;
            for (let j = 0; j < px.length; j++) if (j !== i) gap = Math.min(gap, Math.hypot(px[i] - px[j], py[i] - py[j]));
            const inside = px[i] > r.left + xa._offset + 20 && px[i] < r.left + xa._offset + xa._length - 20
              && py[i] > r.top + ya._offset + 20 && py[i] < r.top + ya._offset + ya._length - 20;
            if (inside && gap > bestGap) {{ bestGap = gap; best = i; }}
          }}
          return {{i: best, x: px[best], y: py[best], gap: bestGap}};
        }}""")
        page.mouse.move(1, 1)
        page.mouse.move(target["x"], target["y"])  # one move: hover this point only (plotly clicks the hovered one)
        hovered = target["i"]
        try:
            _wait(page, "(t) => document.querySelector('.wb-embedding-explorer').textContent.includes(t)",
                  arg=f"#{hovered}: ", timeout=30,
                  what=f"the caption of point #{hovered} beside the plot (hover event through the FigureWidget)")
        except AssertionError as e:
            shown = re.findall(r"#\d+: [^,]*", page.locator(".wb-embedding-explorer").text_content())
            raise AssertionError(f"{e}; captions shown: {shown}; target: {target}") from None
        thumb = ".wb-embedding-explorer img.wb-embedding-thumb"
        _wait(page, f"() => {{ const i = document.querySelector({thumb!r}); return i && i.complete && "
                    "i.naturalWidth > 0 && getComputedStyle(i).visibility === 'visible'; }",
              what="the hovered point's image beside the plot")
        page.mouse.click(target["x"], target["y"])
        _wait(page, f"() => document.querySelectorAll({gallery + ' img'!r}).length >= 9",
              what="the neighbours gallery after clicking a point", timeout=60)
        text = page.locator(gallery).text_content()
        assert f"nearest neighbours of #{hovered} " in text, text
        assert page.locator(f"{gallery} img").count() == 9, text  # the query and its k=8 neighbours
        _wait(page, f"() => [...document.querySelectorAll({gallery + ' img'!r})].every(i => i.naturalWidth > 0)",
              what="the gallery images to decode")
        _shot(page, ".wb-embedding-explorer", "05-embedding-neighbours.png")

        # (c) AttentionViewer (CNN: patch similarity): both panels are overlay images (data: PNGs in image traces)
        att = ".wb-attention-viewer .js-plotly-plot.wb-attention-plot"
        _wait(page, f"() => {{ const g = document.querySelector({att!r}); return g && "
                    "[...g.querySelectorAll('.imagelayer image')].filter(i => "
                    "(i.getAttribute('href') || '').startsWith('data:image/png')).length >= 2; }",
              what="the attention viewer's overlay images")
        pictures = page.evaluate(f"""async () => {{  // size and number of distinct colours of each panel
          const out = [];
          for (const el of document.querySelectorAll({att + ' .imagelayer image'!r})) {{
            const img = new Image(); img.src = el.getAttribute('href'); await img.decode();
            const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
            const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
            const px = ctx.getImageData(0, 0, c.width, c.height).data, colours = new Set();
            for (let k = 0; k < px.length; k += 4) colours.add((px[k] << 16) | (px[k + 1] << 8) | px[k + 2]);
            out.push({{w: img.width, h: img.height, colours: colours.size}});
          }}
          return out;
        }}""")
        assert len(pictures) == 2 and all(p["w"] >= 32 and p["colours"] > 16 for p in pictures), pictures
        assert "similarity to patch (0, 0)" in page.locator(att).text_content()  # CNN backbone: patch similarity
        _shot(page, ".wb-attention-viewer", "06-attention.png")
        page.locator(att).scroll_into_view_if_needed()
        box = page.evaluate(f"""() => {{  // click the left panel at 80% of its width and height (lower right)
          const g = document.querySelector({att!r}), xa = g._fullLayout.xaxis, ya = g._fullLayout.yaxis;
          const r = g.getBoundingClientRect();
          return {{x: r.left + xa._offset + 0.8 * xa._length, y: r.top + ya._offset + 0.8 * ya._length}};
        }}""")
        page.mouse.move(box["x"] - 10, box["y"] - 10)
        page.mouse.move(box["x"], box["y"], steps=4)
        page.wait_for_timeout(300)
        page.mouse.click(box["x"], box["y"])
        _wait(page, f"() => {{ const m = document.querySelector({att!r}).textContent"
                    ".match(/similarity to patch \\((\\d+), (\\d+)\\)/); return m && +m[1] > 0 && +m[2] > 0; }",
              what="the patch-similarity view to follow the clicked patch (lower right)", timeout=60)
        _shot(page, ".wb-attention-viewer", "07-attention-clicked.png")

        state = page.evaluate(STATE_JS)
        assert not state["errors"], "error in the notebook's outputs:\n" + "\n---\n".join(state["errors"])
        _no_console_errors(console)
        assert not page.evaluate(BROKEN_IMAGES_JS), page.evaluate(BROKEN_IMAGES_JS)
        print(f"browser test done in {time.monotonic() - t0:.0f} s")


# ---------------------------------------------------------------------------------------------------- live training
LIVE_NOTEBOOK = "live_training.ipynb"
LIVE_CELLS = [
    # 0: a tiny run that would train for minutes, started in the background
    "from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig, start_pretrain\n"
    "config = PretrainConfig(method='simclr', data=DataConfig(name='shapes', image_size=16, options={'n': 256}),\n"
    "                        model=ModelConfig(backbone='small_cnn', options={'width': 8}),\n"
    "                        train=TrainConfig(epochs=400, batch_size=64, log_every=1, knn_every=1, knn_max_train=256,\n"
    "                                          knn_max_test=64, device='cpu', progress='on'), out={runs!r})\n"
    "handle = start_pretrain(config)",
    # 1: the monitor follows the live run
    "from widgets import TrainingMonitor\nmonitor = TrainingMonitor(handle, poll_interval=0.5)\nmonitor",
    # 2: the kernel answers while the run trains
    "print('answer', 6 * 7, 'while training:', not handle.done())",
    # 3: stop
    "handle.stop()\nrun = handle.wait(120)\nprint('status', run.status['status'])",
    # 4-6: the three widgets on the finished run
    "from widgets import EmbeddingExplorer\nEmbeddingExplorer(run, umap='off')",
    "from widgets import AttentionViewer\nimport workbench.data as data\n"
    "AttentionViewer(run, data.load('shapes', split='test', size=16, n=8))",
    "from widgets import RunBrowser\nbrowser = RunBrowser(run.path.parent)\nbrowser.select.value = (run.path.name,)\n"
    "browser",
]


def _write_live_notebook(lab: Lab) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c.replace("{runs!r}", repr(str(lab.base / "live-runs"))))
                for c in LIVE_CELLS]
    nbformat.write(nb, str(lab.root / LIVE_NOTEBOOK))


LIVE = ".jp-NotebookPanel:not(.lm-mod-hidden) "  # the notebook in front (the quickstart's tab may still exist)


def _run_cell(page: Any, i: int) -> None:
    """Select code cell ``i`` (click its prompt area) and run it with Ctrl+Enter (Shift+Enter on the last cell would
    add an empty one)."""
    cell = page.locator(LIVE + ".jp-CodeCell").nth(i)
    cell.scroll_into_view_if_needed()
    cell.locator(".jp-InputArea-prompt").click()
    page.keyboard.press("Control+Enter")


def _cell_text(page: Any, i: int) -> str:
    return page.locator(LIVE + ".jp-CodeCell").nth(i).locator(".jp-OutputArea").text_content() or ""


def _monitor_points(page: Any) -> int:
    return page.evaluate("""(p) => { const g = document.querySelector(p + '.wb-training-monitor .js-plotly-plot');
      return g && g.data && g.data[0] && g.data[0].x ? g.data[0].x.length : 0; }""", LIVE)


@pytest.mark.timeout(420)
def test_live_training_stop_and_widgets_in_jupyterlab(lab: Lab, browser_page: Any) -> None:
    """start_pretrain from a notebook: the monitor's curve gains points while another cell runs, the progress bar
    stays in the cell that started the run, stop() shows as a stop, and the three widgets render on the run."""
    page = browser_page
    _write_live_notebook(lab)
    console = _console_log(page)
    shots = Path(os.environ.get("WB_BROWSER_SHOTS", str(ARTIFACTS)))  # git-ignored; elsewhere on request
    for k in lab.api("GET", "/api/kernels"):  # the quickstart test's kernel: this notebook gets the only one
        lab.api("DELETE", f"/api/kernels/{k['id']}", timeout=30)
    page.goto(f"{lab.url}/lab/tree/{LIVE_NOTEBOOK}?reset&token={lab.token}", timeout=90_000)
    with _reporting_failure(page, lab, console, shots / "live-failure.png"):
        _wait(page, "(p) => document.querySelectorAll(p + '.jp-CodeCell').length === 7", arg=LIVE, timeout=90,
              what="the notebook to open")
        _wait_kernel(page, lab, timeout=90)
        _run_cell(page, 0)
        _run_cell(page, 1)
        _wait(page, "(p) => { const g = document.querySelector(p + '.wb-training-monitor .js-plotly-plot');"
                    " return g && g.data && g.data[0].x && g.data[0].x.length >= 2; }", arg=LIVE, timeout=120,
              what="the monitor's first points")
        first = _monitor_points(page)
        _run_cell(page, 2)
        _wait(page, "(p) => { const c = document.querySelectorAll(p + '.jp-CodeCell')[2];"
                    " return c.querySelector('.jp-OutputArea').textContent.includes('answer 42'); }", arg=LIVE,
              timeout=60,
              what="another cell to answer while the run trains")
        assert "while training: True" in _cell_text(page, 2), _cell_text(page, 2)
        _wait(page, "([p, n]) => { const g = document.querySelector(p + '.wb-training-monitor .js-plotly-plot');"
                    " return g.data[0].x.length > n; }", arg=[LIVE, first], timeout=60,
              what="the monitor's curve to gain points while training")
        assert "running" in page.locator(LIVE + ".wb-training-monitor").text_content()
        shots.mkdir(parents=True, exist_ok=True)
        page.locator(LIVE + ".wb-training-monitor").screenshot(path=str(shots / "10-monitor-live.png"))
        # the run's progress bar is in the cell that started it, not in the monitor's or the other cell
        assert "simclr/small_cnn" in _cell_text(page, 0), _cell_text(page, 0)
        assert all("simclr/small_cnn" not in _cell_text(page, i) for i in (1, 2))
        _run_cell(page, 3)
        _wait(page, "(p) => document.querySelectorAll(p + '.jp-CodeCell')[3]"
                    ".querySelector('.jp-OutputArea').textContent.includes('status stopped')", arg=LIVE, timeout=120,
              what="stop() to end the run as stopped")
        _wait(page, "(p) => /stopped at epoch [0-9.]+ of 400/.test("
                    "document.querySelector(p + '.wb-training-monitor').textContent)", arg=LIVE, timeout=30,
              what="the monitor to show the stop (stopped at epoch x of 400)")
        for i in (4, 5, 6):
            _run_cell(page, i)
        state = _wait_executed(page, lab, 240)
        assert not state["errors"], "error in the notebook's outputs:\n" + "\n---\n".join(state["errors"])
        _wait(page, "(p) => { const g = document.querySelector(p + '.wb-embedding-explorer .wb-embedding-plot');"
                    " return g && g.data && g.data[0].x.length > 0 && g.querySelector('canvas'); }", arg=LIVE,
              what="the embedding plot")
        legend = page.locator(LIVE + ".wb-embedding-explorer .legend").text_content()
        assert "circle" in legend, legend  # the legend names the classes
        _wait(page, "(p) => { const g = document.querySelector(p + '.wb-attention-viewer .wb-attention-plot');"
                    " return g && g.querySelectorAll('.imagelayer image').length >= 2; }", arg=LIVE,
              what="the attention viewer's overlays")
        _wait(page, "(p) => { const g = document.querySelector(p + '.wb-run-browser .js-plotly-plot');"
                    " return g && g.data && g.data.length >= 1 && g.data[0].x.length > 0; }", arg=LIVE,
              what="the run browser's curves of the selected run")
        assert re.search(r"stopped at epoch [0-9.]+ of 400", page.locator(LIVE + ".wb-run-browser").text_content())
        for sel, name in ((".wb-training-monitor", "11-monitor-stopped.png"),
                          (".wb-embedding-explorer", "12-embedding.png"),
                          (".wb-attention-viewer", "13-attention.png"), (".wb-run-browser", "14-runs.png")):
            page.mouse.move(1, 1)
            el = page.locator(LIVE + sel).first
            el.scroll_into_view_if_needed()
            el.screenshot(path=str(shots / name))
        _no_console_errors(console)

"""TensorBoard as a person sees it: a headless Chromium (Debian's `chromium`) opens the scalars dashboard of a finished
tiny run, the page must show the run's train/loss chart drawn, and the default page must list the run by its name and
open on its train/ and valid/ groups. The screenshot is kept (README's picture comes from it:
`SA_MEGATRON_SCREENSHOT=docs/tensorboard-scalars.png pytest tests/test_tensorboard_view.py`).

Chromium is driven over its DevTools pipe (fds 3 and 4, NUL-separated JSON): the dashboard is Polymer, its text
lives in shadow roots that `--dump-dom` does not print, so the check runs JavaScript that walks them."""

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from sa_megatron.training.distributed import free_port
from tests.training.launch import REPO, child_env
from tests.training.tiny_run import make_corpus, tiny_config_dict

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true",
                                reason="needs Debian's chromium (apt-get install chromium); CI installs it")

# Resolves when the page shows the train/loss tag and the four train/ charts at the top of the filtered dashboard
# have drawn their data line (plottable's `path.line`; charts render lazily, as they come into view), or after 45 s
# with what it saw.
SHOWS_LOSS_CHART = r"""new Promise(resolve => {
  const deep = (root, out) => { for (const el of root.querySelectorAll('*')) { out.push(el);
    if (el.shadowRoot) deep(el.shadowRoot, out); } return out; };
  const drawn = chart => deep(chart.shadowRoot || chart, []).some(x => x.tagName === 'path'
    && (x.getAttribute('class') || '').split(' ').includes('line') && (x.getAttribute('d') || '').length > 20);
  const look = () => { const els = deep(document, []);
    const text = els.filter(e => e.shadowRoot).map(e => e.shadowRoot.textContent).join(' ');
    const charts = els.filter(e => e.tagName === 'VZ-LINE-CHART2');
    return {loss_tag: text.includes('train/loss'), charts: charts.length,
            drawn_on_top: charts.slice(0, 4).filter(drawn).length}; };
  const start = Date.now();
  const tick = () => { const seen = look();
    if ((seen.loss_tag && seen.drawn_on_top === 4) || Date.now() - start > 45000) resolve(JSON.stringify(seen));
    else setTimeout(tick, 500); };
  tick(); })"""


# The Time Series dashboard (TensorBoard's default page): its tag groups in order, whether each is open (shows its
# cards), and the runs listed; resolves once the groups and runs are there, or after 45 s with what it saw.
SHOWS_GROUPS_AND_RUNS = r"""new Promise(resolve => {
  const deep = (root, out) => { for (const el of root.querySelectorAll('*')) { out.push(el);
    if (el.shadowRoot) deep(el.shadowRoot, out); } return out; };
  const look = () => { const els = deep(document, []);
    const groups = els.filter(e => (e.className || '').toString().split(' ').includes('card-group')).map(g => {
      const title = deep(g, []).find(e => (e.className || '').toString().split(' ').includes('group-title'));
      return [title ? title.textContent.trim() : '', deep(g, []).some(e => e.tagName === 'CARD-VIEW')]; });
    const runs = els.filter(e => e.tagName === 'TB-DATA-TABLE-CONTENT-ROW').map(e => e.textContent.trim());
    return {groups, runs}; };
  const start = Date.now();
  const tick = () => { const seen = look();
    if ((seen.groups.length >= 5 && seen.runs.length) || Date.now() - start > 45000) resolve(JSON.stringify(seen));
    else setTimeout(tick, 500); };
  tick(); })"""


class DevTools:
    """Just enough of the Chrome DevTools Protocol over --remote-debugging-pipe."""

    def __init__(self, width: int = 1280, height: int = 900):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def child():  # chromium reads fd 3 and writes fd 4; dup first, the pipes may sit on 3 and 4 themselves
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--remote-debugging-pipe", f"--window-size={width},{height}", "about:blank"],
            preexec_fn=child, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer, self._id = b"", 0

    def call(self, method: str, session: str = None, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_chrome, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed its DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(reply["error"])
                return reply["result"]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def serve_tensorboard(logdir: Path, port: int) -> subprocess.Popen:
    board = subprocess.Popen([str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(logdir),
                              "--host", "127.0.0.1", "--port", str(port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5) as reply:
                if "train/loss" in reply.read().decode():
                    return board
        except OSError:
            pass
        time.sleep(0.5)
    board.kill()
    raise AssertionError(f"TensorBoard served no train/loss within 60 s: {board.communicate()[1][-3000:]}")


def evaluate_on_page(browser: DevTools, url: str, expression: str) -> tuple[dict, str]:
    """Open `url` in a new tab and run `expression` there (a Promise of JSON): (its value, the tab's session)."""
    target = browser.call("Target.createTarget", url=url)["targetId"]
    session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for _ in range(30):  # the first tries may land while the page replaces about:blank
        try:
            return json.loads(browser.call("Runtime.evaluate", session, expression=expression, awaitPromise=True,
                                           returnByValue=True)["result"]["value"]), session
        except RuntimeError:
            time.sleep(1)
    raise AssertionError(f"could not evaluate on {url}")


def test_scalars_dashboard_shows_the_loss_chart(tmp_path):
    """A run with only a save_dir (tiny-sa): its logs are in tiny-sa/tensorboard/tiny-sa, TensorBoard lists the run as
    tiny-sa and opens on its train/ and valid/ groups, the diagnostics after them, closed."""
    assert CHROMIUM, "chromium is not installed (apt-get install chromium)"
    tokenizer, prefix = make_corpus(tmp_path)
    raw = tiny_config_dict(tokenizer, prefix, training={"train_iters": 12, "eval_interval": 6, "eval_iters": 1},
                           checkpoint={"save_dir": str(tmp_path / "tiny-sa"), "save_interval": 0},
                           logging={"log_interval": 1})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    subprocess.run([sys.executable, "-m", "launcher.cli", "train", str(tmp_path / "run.yaml")], cwd=REPO,
                   env=child_env(), check=True, capture_output=True, timeout=300)

    port = free_port()
    board = serve_tensorboard(tmp_path / "tiny-sa" / "tensorboard", port)
    browser = DevTools()
    try:
        seen, session = evaluate_on_page(browser, f"http://127.0.0.1:{port}/#scalars&tagFilter=%5Etrain%2F",
                                         SHOWS_LOSS_CHART)
        time.sleep(1)  # the last chart's animation
        png = base64.b64decode(browser.call("Page.captureScreenshot", session, format="png")["data"])
        default_page, _ = evaluate_on_page(browser, f"http://127.0.0.1:{port}/#timeseries", SHOWS_GROUPS_AND_RUNS)
    finally:
        browser.close()
        board.kill()
        board.wait()
    (tmp_path / "tensorboard-scalars.png").write_bytes(png)
    if os.environ.get("SA_MEGATRON_SCREENSHOT"):
        Path(os.environ["SA_MEGATRON_SCREENSHOT"]).write_bytes(png)
    assert seen["loss_tag"] and seen["drawn_on_top"] == 4, seen  # the first four train/ charts
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000, len(png)
    groups = [group for group in default_page["groups"] if group[0] != "Pinned"]
    assert groups == [["train", True], ["valid", True], ["x_attention", False], ["x_grad_norm", False],
                      ["x_memory", False]], default_page
    assert [run for run in default_page["runs"] if "tiny-sa" in run] and len(default_page["runs"]) == 1, default_page

"""The documentation site: it builds with warnings as errors, every code example in it runs, and
the built pages render in a browser with every internal link resolving.

One build, one run of the examples and one browser run serve every test of this module, once per
test run even under pytest-xdist (the first worker makes them, the others wait and read them):

- ``site``: ``sphinx-build -W`` of ``docs/`` into a temporary folder, in a subprocess (Sphinx
  and its extensions raise deprecation warnings of their own, which this suite makes errors).
- ``blocks``: every ```python block of the pages in ``docs/`` runs in one interpreter, each
  block in a fresh namespace and a fresh temporary folder, with eight virtual CPU devices as the
  docs tell users to set up. A block may not lean on names from another block: a user copies one
  block at a time. A block that must not run is written as a ```{code-block} python directive.
  A ``print(...)  # expected`` line must print what its comment says.
- ``browser``: headless Chromium (Debian's ``chromium`` package) loads every built page from a
  local HTTP server, in one run, and reports each page's ``h1``, element ids and links. The home
  page and the API page are also saved as screenshots (into ``$ADAM_JAX_DOCS_SCREENSHOTS`` when
  set; ``results/docs/screenshots/`` holds the committed ones).
"""

from __future__ import annotations

import fcntl
import functools
import html
import http.server
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest

from tests.xla_env import xla_flags

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"

pytest.importorskip("sphinx", reason="the docs extra is not installed")
pytest.importorskip("myst_nb", reason="the docs extra is not installed")


def _pages() -> list[Path]:
    return sorted(
        p
        for p in DOCS.rglob("*.md")
        if "_build" not in p.parts and p.relative_to(DOCS).as_posix() != "README.md"
    )


def _python_blocks() -> list[tuple[str, str]]:
    """(id, code) of every ```python block: the page's path and the block's position in it."""
    blocks = []
    for page in _pages():
        text = page.read_text()
        for i, match in enumerate(re.finditer(r"^```python\n(.*?)^```", text, re.M | re.S), 1):
            blocks.append((f"{page.relative_to(DOCS).with_suffix('').as_posix()}-{i}", match[1]))
    return blocks


BLOCKS = _python_blocks()

# Runs in a fresh interpreter: reads [(id, code)] as JSON from the file in argv[1], runs each block
# in a fresh namespace and folder, writes {id: {"ok", "stdout", "error"}} as JSON to argv[2].
_RUNNER = r"""
import contextlib, io, json, os, sys, tempfile, time, traceback
with open(sys.argv[1]) as f:
    blocks = json.load(f)
results = {}
for block_id, code in blocks:
    out, start = io.StringIO(), time.process_time()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(code, block_id, "exec"), {"__name__": "__main__"})
            results[block_id] = {"ok": True, "stdout": out.getvalue(), "error": ""}
        except BaseException:
            results[block_id] = {"ok": False, "stdout": out.getvalue(),
                                 "error": traceback.format_exc()[-4000:]}
        os.chdir("/")
    results[block_id]["cpu_s"] = time.process_time() - start
with open(sys.argv[2], "w") as f:
    json.dump(results, f)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = xla_flags(8)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    return env


def _produce(root: Path) -> dict:
    """Run the examples and build the site (together), then look at the site in Chromium."""
    (root / "blocks-in.json").write_text(json.dumps(BLOCKS))
    runner = subprocess.Popen(
        [sys.executable, "-c", _RUNNER, str(root / "blocks-in.json"), str(root / "blocks.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    out = root / "site" / "html"
    doctrees = root / "site" / "doctrees"
    build = subprocess.Popen(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d"]
        + [str(path) for path in (doctrees, DOCS, out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    try:
        log, _ = build.communicate(timeout=900)
        _, runner_err = runner.communicate(timeout=900)
    finally:
        for process in (runner, build):
            if process.poll() is None:
                process.kill()
    made = {"site": str(out), "build_rc": build.returncode, "build_log": log[-6000:]}
    made["blocks_error"] = "" if runner.returncode == 0 else runner_err[-4000:]
    made["browser"] = _look(out, root) if build.returncode == 0 else {"error": "no site"}
    return made


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """What ``_produce`` made, once per test run: under pytest-xdist the first worker to get here
    produces it into the run's shared temporary folder, the others wait for it and read it."""
    root = tmp_path_factory.getbasetemp().parent / "adam_jax_docs"
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        root = tmp_path_factory.mktemp("docs")
    root.mkdir(exist_ok=True)
    with open(root.parent / "adam_jax_docs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "made.json").exists():
            (root / "made.json").write_text(json.dumps(_produce(root)))
    made = json.loads((root / "made.json").read_text())
    made["root"] = root
    return made


@pytest.fixture(scope="module")
def site(made) -> Path:
    assert made["build_rc"] == 0, f"sphinx-build -W failed:\n{made['build_log']}"
    return Path(made["site"])


@pytest.fixture(scope="module")
def blocks(made) -> dict:
    assert not made["blocks_error"], made["blocks_error"]
    return json.loads((made["root"] / "blocks.json").read_text())


def test_the_docs_have_python_blocks():
    assert len(BLOCKS) >= 15
    assert any(block_id.startswith("guides/getting-started") for block_id, _ in BLOCKS)


@pytest.mark.parametrize("block_id", [i for i, _ in BLOCKS])
def test_block_runs(block_id, blocks):
    result = blocks[block_id]
    assert result["ok"], result["error"]
    code = dict(BLOCKS)[block_id]
    for expected in re.findall(r"^print\(.*\)  # (.+)$", code, re.M):
        assert expected.strip() in result["stdout"], (expected, result["stdout"])


def test_training_example_loss_goes_down(blocks):
    """The complete example of Getting started prints a loss per epoch that falls every epoch."""
    (block_id,) = [i for i, code in BLOCKS if "for epoch in range(5)" in code]
    stdout = blocks[block_id]["stdout"]
    losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", stdout)]
    assert len(losses) == 5, stdout
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < 0.6 * losses[0], losses


def test_site_builds_every_page(site):
    for page in _pages():
        name = page.relative_to(DOCS).with_suffix(".html")
        assert (site / name).is_file(), f"{name} was not built"
    # the notebooks, rendered from their committed outputs
    first = (site / "notebooks" / "01_adam_explained.html").read_text()
    assert "within strict bound at every step: True" in first
    second = (site / "notebooks" / "02_reproducing_section_6.html").read_text()
    assert "<img" in second, "notebook 02 rendered without its figures"


def test_api_reference_documents_every_public_name(site):
    import adam_jax
    import adam_jax.compat

    text = (site / "api.html").read_text()
    names = [f"adam_jax.{n}" for n in adam_jax.__all__]
    names += [f"adam_jax.compat.{n}" for n in adam_jax.compat.__all__]
    names += ["adam_jax.quantize.state_bytes", "adam_jax.quantize.code_values"]
    missing = [n for n in names if f'id="{n}"' not in text]
    assert not missing, f"docs/api.md lacks entries for {missing}"


def test_generated_tables_show_their_sources(site):
    """Each measured table is generated from results/ and says when and with what it was
    measured."""
    performance = (site / "guides" / "performance.html").read_text()
    for name in ("cpu.json", "cpu-1000-leaves.json", "cpu-8bit.json", "cpu-8bit-repeat.json"):
        record = json.loads((REPO / "results" / "bench" / name).read_text())
        assert f"results/bench/{name}" in performance
        assert f"measured {record['date'][:10]}" in performance
        assert f"jax {record['versions']['jax']}" in performance
    paper = (site / "guides" / "paper.html").read_text()
    unrecorded = 0  # sittings killed outright before they wrote any time: the table says so
    for folder in ["quick", *(p.name for p in sorted((REPO / "results").glob("full_*")))]:
        info = json.loads((REPO / "results" / folder / "run.json").read_text())
        assert f"results/{folder}" in paper and f"jax {info['jax']}" in paper
        unrecorded += sum(
            s["status"] == "running" and not s.get("figure_seconds") for s in info["sittings"][:-1]
        )
    assert paper.count("killed before it recorded any time, not counted") == unrecorded
    assert "--tiny" in paper and "--no-progress" in paper  # the synopsis is the parser's
    monitor = (site / "guides" / "monitor.html").read_text()
    for run in sorted((REPO / "results" / "monitor").glob("cpu-run*.txt")):
        assert f"results/monitor/{run.name}" in monitor


def test_where_each_claim_stands_takes_full_runs_first_and_labels_the_rest():
    """The summary table of verdicts: every claim of a committed full run at paper-equivalent
    iterations (a ``results/full_*`` folder with its CSV) with that run's verdict; a figure
    without one from the quick runs, labelled quick, with a reason whose figures are the cost
    file's; no quick row of a figure that has a full run."""
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        import results_tables
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    table = results_tables.claims_current()
    listed = {}
    for line in table.splitlines()[2:]:
        figure, _claim, seeds, verdict, source = line[2:-2].split(" | ")
        listed[figure] = (seeds, verdict, source)

    def rows(folder: Path) -> dict[str, tuple[str, str]]:  # claim name -> (seeds, verdict)
        found = re.findall(r"^\| (Fig[^|]*?) \|.*\| ([^|]*) \| ([^|]*) \|$",
                           (folder / "summary.md").read_text(), re.M)  # fmt: skip
        return {name: (seeds, verdict) for name, seeds, verdict in found}

    full = [f for f in sorted((REPO / "results").glob("full_*")) if (f / "results.csv").exists()]
    with_full = set()
    for folder in full:
        for name, (seeds, verdict) in rows(folder).items():
            assert listed.pop(name) == (seeds, verdict, f"`results/{folder.name}`")
            with_full.add(re.match(r"Fig\. \w+", name).group(0))
    assert {"Fig. 1", "Fig. 4"} <= with_full
    costs = (REPO / "results" / "FULL_RUN_COST.md").read_text()
    for run in ("quick", "fig2b"):
        for name, (seeds, verdict) in rows(REPO / "results" / run).items():
            if re.match(r"Fig\. \w+", name).group(0) in with_full:
                assert name not in listed
                continue
            got_seeds, got_verdict, source = listed.pop(name)
            assert (got_seeds, got_verdict) == (seeds, verdict) and verdict.endswith("(quick)")
            assert source.startswith(f"`results/{run}`: ") and len(source) > 40  # a reason
            for figure in re.findall(r"about ([\d,]+ CPU-hours)|\((\d+ PFLOP)", source):
                assert "".join(figure) in costs.replace("\n", " ")
    assert not listed  # nothing else in the table


# --- the browser ------------------------------------------------------------------------------

_HARNESS = """<!doctype html><html><head><meta charset="utf-8"><title>check</title></head><body>
<pre id="result"></pre>
%s
<script>
window.addEventListener("load", function () {
  var pages = {};
  document.querySelectorAll("iframe").forEach(function (frame) {
    var doc = frame.contentDocument;
    var h1 = doc.querySelector("h1");
    pages[frame.getAttribute("src")] = {
      h1: h1 ? h1.textContent : null,
      ids: Array.from(doc.querySelectorAll("[id]")).map(function (e) { return e.id; }),
      links: Array.from(doc.querySelectorAll("a[href]")).map(function (a) { return a.href; }),
      text: doc.body ? doc.body.innerText.length : 0
    };
  });
  document.getElementById("result").textContent = JSON.stringify(pages);
});
</script></body></html>
"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium_args(profile: Path) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _html_pages(site: Path) -> list[str]:
    return sorted(
        p.relative_to(site).as_posix()
        for p in site.rglob("*.html")
        if not p.relative_to(site).parts[0].startswith("_")
        and p.name not in {"genindex.html", "search.html", "_check.html"}
    )


def _look(site: Path, root: Path) -> dict:
    """Every built page loaded in headless Chromium from a local HTTP server (one run, the pages
    in frames of one harness page), and screenshots of the home and API pages."""
    chromium = _chromium()
    if chromium is None:
        return {"missing": True}
    pages = _html_pages(site)
    frames = "\n".join(f'<iframe src="{p}" width="1200" height="800"></iframe>' for p in pages)
    (site / "_check.html").write_text(_HARNESS % frames)
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    server = f"http://127.0.0.1:{httpd.server_address[1]}/"
    profile = root / "chromium-profile"
    shots = Path(os.environ.get("ADAM_JAX_DOCS_SCREENSHOTS") or root / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    try:
        dump = ["--virtual-time-budget=30000", "--dump-dom", server + "_check.html"]
        result = subprocess.run(
            [chromium, *_chromium_args(profile), *dump],
            capture_output=True,
            text=True,
            timeout=300,
        )
        found = re.search(r'<pre id="result">(.*?)</pre>', result.stdout, re.S)
        if not (found and found[1]):
            return {"error": f"chromium reported nothing:\n{result.stderr[-3000:]}"}
        for name, page in (("home", "index.html"), ("api", "api.html")):
            shot = ["--window-size=1280,1000", f"--screenshot={shots / (name + '.png')}"]
            subprocess.run(
                [chromium, *_chromium_args(profile), *shot, server + page],
                capture_output=True,
                timeout=120,
                check=True,
            )
    finally:
        httpd.shutdown()
    report = json.loads(html.unescape(found[1]))
    return {"pages": pages, "report": report, "server": server, "shots": str(shots)}


@pytest.fixture(scope="module")
def browser(made, site) -> dict:
    seen = made["browser"]
    if seen.get("missing"):
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium package (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    assert "error" not in seen, seen.get("error")
    return {**seen, "shots": Path(seen["shots"])}


def test_every_page_renders(browser, site):
    report = browser["report"]
    assert set(report) == set(browser["pages"])
    for page, seen in report.items():
        source = (site / page).read_text()
        h1 = re.search(r"<h1[^>]*>(.*?)</h1>", source, re.S)
        assert h1 and seen["h1"], f"{page} shows no heading"
        expected = html.unescape(re.sub(r"<[^>]+>", "", h1[1])).replace("#", "").strip()
        assert seen["h1"].replace("#", "").strip() == expected, page
        assert seen["text"] > 200, f"{page} rendered almost no text"


def test_every_internal_link_resolves(browser, site):
    report, server = browser["report"], browser["server"]
    broken = []
    for page, seen in report.items():
        for href in seen["links"]:
            if not href.startswith(server):
                continue  # an external link: not fetched
            url = urllib.parse.urlsplit(href)
            target = urllib.parse.unquote(url.path[len(urllib.parse.urlsplit(server).path) :])
            target = target or "index.html"
            if target.endswith("/"):
                target += "index.html"
            if not (site / target).exists():
                broken.append(f"{page}: {href} (no such file)")
            elif url.fragment and target in report:
                if urllib.parse.unquote(url.fragment) not in report[target]["ids"]:
                    broken.append(f"{page}: {href} (no #{url.fragment} there)")
    assert not broken, "\n".join(broken)


def test_screenshots_show_the_pages(browser):
    from PIL import Image

    for name in ("home", "api"):
        with Image.open(browser["shots"] / f"{name}.png") as image:
            assert image.size == (1280, 1000)
            colors = image.convert("L").getcolors(maxcolors=256 * 256)
            assert colors is None or len(colors) > 20, f"{name}.png is nearly blank"

"""The HTML report: self-contained, every figure a real PNG, and it still renders for logs with
nothing to plot (a classifier baseline, no truth, a run that died before its first scored round)."""
from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import h5py
import pytest
from conftest import run_cli, small_args

from fedgmi_mpi.analysis.reader import load
from fedgmi_mpi.analysis.report import render, write_report
from fedgmi_mpi.errors import UserError

HEADINGS = ("Final scores", "Scores over training rounds", "Estimated against true proportions", "Per-client proportions",
            "Confusion of true and learned components", "Held-out log-likelihood per component", "Bytes against error",
            "Samples from each component's VAE", "Configuration", "Provenance")
PNG = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.headings: list[str] = []
        self.scripts = 0
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        self.links += [v for k, v in attrs if k in ("src", "href") and v]
        self.scripts += tag == "script"
        self._in_h2 = self._in_h2 or tag == "h2"
        if tag == "h2":
            self.headings.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_h2 = self._in_h2 and tag != "h2"

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.headings[-1] += data


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    return page


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("report_logs")
    variants = {"dense": (), "onebit": ("compression.uplink_bits=1",), "fedavg": ("algorithm.name=fedavg",)}
    out = {}
    for name, extra in variants.items():
        out[name] = folder / f"{name}.h5"
        result = run_cli(["run", "--out", str(out[name]), "--quiet", *small_args(*extra)])
        assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def report(logs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    write_report([logs["dense"], logs["onebit"], logs["fedavg"]], out)
    return out


def check_images(page: Page, count: int) -> None:
    assert len(page.images) == count
    for src in page.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        data = base64.b64decode(src[len(prefix):], validate=True)
        assert data.startswith(PNG) and len(data) > 5000


def test_report_structure(report, logs):
    text = report.read_text(encoding="utf-8")
    page = parse(text)
    # curves, scatter, bars, confusion, held-out, bytes (budgets differ), samples
    check_images(page, 7)
    assert not [link for link in page.links if re.match(r"(?i)https?:|//", link)]
    assert page.scripts == 0 and "could not draw" not in text
    for heading in HEADINGS:
        assert any(h.startswith(heading) for h in page.headings), heading
    for name in ("dense.h5", "onebit.h5", "fedavg.h5", "up 1 bit"):
        assert name in text
    # configuration (the differing settings shaded) and provenance
    assert re.search(r'<tr class="differs"><td>compression\.uplink_bits</td>', text)
    for key in ("algorithm.name", "scenario.num_components", "git_commit", "mpi_library", "world_size", "versions",
                "created", "finished", "command", "seed"):
        assert f"<td>{key}</td>" in text, key
    assert "the fedavg algorithm estimates no mixture proportions" not in text  # detail is for the first log


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browse(browser: str, profile: Path, *args: str) -> str:
    result = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                             "--hide-scrollbars", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_report_in_browser(report, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium: browser check skipped; structure checked by test_report_structure")
    import matplotlib.image

    shot = tmp_path / "report.png"
    browse(browser, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,4000", report.as_uri())
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (4000, 1280) and pixels[..., :3].std() > 0.05  # not one blank colour
    dom = browse(browser, tmp_path / "profile", "--dump-dom", report.as_uri())
    assert dom.count("<img") == 7
    # every image decoded by the browser: a copy with a probe script that reports through the title
    probe = ("<script>window.addEventListener('load', () => {const images = [...document.images];"
             "document.title = images.every(i => i.complete && i.naturalWidth > 0) ? 'IMAGES_OK ' + images.length"
             " : 'IMAGES_BAD';});</script>")
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text(encoding="utf-8").replace("</body>", probe + "</body>"), encoding="utf-8")
    dom = browse(browser, tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    assert "<title>IMAGES_OK 7</title>" in dom


def test_report_degrades(logs, tmp_path):
    """No truth, and a run that died before its first scored round: sentences instead of plots."""
    no_truth = tmp_path / "no_truth.h5"
    shutil.copy(logs["dense"], no_truth)
    with h5py.File(no_truth, "r+") as file:
        del file["truth"]
    partial = tmp_path / "died.h5.partial"
    shutil.copy(logs["dense"], partial)
    with h5py.File(partial, "r+") as file:  # as the log looks during the topic rounds
        for name, length in (("train", 0), ("evaluate", 0), ("rounds", 10)):
            for node in file[name].values():
                for dataset in node.values() if isinstance(node, h5py.Group) else [node]:
                    dataset.resize(length, axis=0)
        file["status"][0] = 0
        file["model/round"][0] = -1
    out = write_report([no_truth, tmp_path / "died.h5", logs["fedavg"]], tmp_path / "degraded.html")
    text = out.read_text(encoding="utf-8")
    page = parse(text)
    assert "could not draw" not in text
    assert "the scenario holds no truth" in text and "died.h5: no scored round yet" in text
    check_images(page, 3)  # the no-truth log's curves (accuracy), held-out log-likelihoods and samples
    run = load(tmp_path / "died.h5")
    assert run.status == "incomplete" and run.scores.empty
    only_dead = parse(render([run], [None]))
    assert only_dead.images == [] and len(only_dead.headings) == len(HEADINGS)
    fedavg = render([load(logs["fedavg"])], [None])
    assert "the fedavg algorithm estimates no mixture proportions" in fedavg and "could not draw" not in fedavg
    check_images(parse(fedavg), 1)  # accuracy over rounds only


def test_write_report_refuses(logs, tmp_path):
    out = tmp_path / "report.html"
    out.write_text("mine")
    with pytest.raises(UserError, match="exists"):
        write_report([logs["fedavg"]], out)
    assert out.read_text() == "mine"
    with pytest.raises(UserError, match="does not exist"):
        write_report([logs["fedavg"]], tmp_path / "missing" / "report.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no temp file left behind

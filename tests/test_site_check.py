"""The documentation-site check (.ci/check_site.py) finds what it is for:
broken links, anchors and images, and code wider than its box, in a real
headless Chromium."""

from __future__ import annotations

import importlib.util
import pathlib
import shutil

import pytest

HERE = pathlib.Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(shutil.which("chromium") is None,
                                reason="needs Chromium (.ci/run installs Debian's)")


def _check_site():
    spec = importlib.util.spec_from_file_location("check_site",
                                                  HERE.parent / ".ci" / "check_site.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PAGE = """<!doctype html><html><head><style>body {{ margin: 0 }}
pre > code {{ display: block; overflow: auto; width: 300px }}</style></head>
<body><div class="md-content">{}</div></body></html>"""
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")


def test_a_good_page_passes_and_each_kind_of_problem_is_found(tmp_path):
    site = tmp_path / "site"
    (site / "good").mkdir(parents=True)
    (site / "dot.png").write_bytes(PNG)
    (site / "good" / "index.html").write_text(PAGE.format(
        '<h2 id="here">Here</h2><img src="../dot.png"><a href="../bad/#x">bad</a>'
        '<a href="#here">here</a><a href="https://example.org/">out</a>'
        "<pre><code>short</code></pre>"))
    (site / "bad").mkdir()
    (site / "bad" / "index.html").write_text(PAGE.format(
        '<img src="missing.png"><a href="../nowhere/">gone</a>'
        '<a href="../good/#nothere">no anchor</a><h2 id="x">x</h2>'
        f"<pre><code>{'wide ' * 200}</code></pre>"))
    results = _check_site().check(site, tmp_path / "shots", 1280)
    assert results["good/index.html"] == []
    bad = "\n".join(results["bad/index.html"])
    assert "broken link: ../nowhere/" in bad
    assert "broken anchor: ../good/#nothere" in bad
    assert "broken image: missing.png" in bad
    assert "wider than its box" in bad and "wide wide" in bad
    assert sorted(p.name for p in (tmp_path / "shots").iterdir()) == [
        "bad_index.png", "good_index.png"]

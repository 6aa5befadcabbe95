"""`ocrcat report` and `ocrcat show`: the HTML report renders in headless Chromium, offline."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import io
import json
import os
import queue
import re
import shutil
import subprocess
import threading

import pytest
from PIL import Image
from typer.testing import CliRunner

from ocrcat.catalog import Catalog, sample_id
from ocrcat.inspection.report import build_report, render_table_html
from ocrcat.cli import app
from ocrcat.ingest.runner import ingest

SOURCES = ("chartqa", "latex_formulas", "mathwriting")
TABLE = ('<table><thead><tr><th rowspan="2">Year</th><th colspan="2" onclick="x()">Sales</th></tr></thead>'
         "<tbody><tr><td>2020</td><td>1 &amp; 2</td><td><script>window.pwned = 1</script>3</td></tr></tbody></table>")


@pytest.fixture(scope="module")
def catalog(sample_mirror_factory, tmp_path_factory):
    """Sample-mirror sources plus a table row (HTML response) and a conversation row."""
    path = tmp_path_factory.mktemp("report") / "catalog"
    with Catalog(path) as cat:
        for source in SOURCES:
            ingest(cat, source, mirror=sample_mirror_factory(source, rows=16))
        cat.con.execute(
            "INSERT INTO samples SELECT * REPLACE (? AS sample_id, 'pubtables' AS source, 'train' AS split, "
            "'PMC1_table_0' AS source_key, '<image>\nConvert this table to HTML. <img src=x onerror=\"window.pwned=2\">' "
            "AS text, ? AS response) FROM samples WHERE source = 'chartqa' ORDER BY sample_id LIMIT 1",
            [sample_id("pubtables", "train", "PMC1_table_0"), TABLE],
        )
        messages = [{"role": "user", "content": "What is OCR?"}, {"role": "assistant", "content": "Reading text."}]
        cat.con.execute(
            "INSERT INTO samples (sample_id, source, split, source_key, kind, text, response, messages, meta, ingest_run) "
            "VALUES (?, 'smoltalk', 'train', '0', 'text', 'user: What is OCR?', 'Reading text.', ?, '{}', 1)",
            [sample_id("smoltalk", "train", "0"), json.dumps(messages)],
        )
    return path


# --- a headless Chromium driven over the DevTools protocol on a pipe (no port, no network) -------

def _high_fd(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Chromium:
    """Chromium with --remote-debugging-pipe: CDP messages are NUL-terminated JSON on fds 3 (in) and 4 (out)."""

    def __init__(self, binary: str, profile: str):
        # Pipe ends above fd 9 first, so that moving them onto 3 and 4 in the child never collides.
        cmd_read, self._cmd, self._events, evt_write = (_high_fd(fd) for fd in (*os.pipe(), *os.pipe()))
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--disable-default-apps", "--disable-domain-reliability",
                "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1280,1800", "about:blank"]

        def child_fds() -> None:
            os.dup2(cmd_read, 3)  # dup2 clears close-on-exec: Chromium inherits exactly fds 3 and 4
            os.dup2(evt_write, 4)

        self.proc = subprocess.Popen(args, preexec_fn=child_fds, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_read)
        os.close(evt_write)
        self._next_id = 0
        self._inbox: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while chunk := os.read(self._events, 1 << 16):
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for m in messages:
                self._inbox.put(json.loads(m))
        self._inbox.put(None)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._inbox.get(timeout=timeout)
            assert reply is not None, "chromium closed the pipe"
            if reply.get("id") == self._next_id:
                assert "error" not in reply, reply["error"]
                return reply["result"]
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        while not any(e.get("method") == method for e in self.events):
            event = self._inbox.get(timeout=timeout)
            assert event is not None, "chromium closed the pipe"
            self.events.append(event)
        return next(e for e in self.events if e.get("method") == method)

    def open(self, url: str) -> str:
        """A new tab with console, errors and requests recorded, loaded with `url`; returns its session."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=session)
        self.call("Page.navigate", {"url": url}, session)
        self.wait_event("Page.loadEventFired")
        return session

    def evaluate(self, session: str, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        assert "exceptionDetails" not in result, result
        return result["result"]["value"]

    def console_errors(self) -> list[str]:
        errors = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                errors.append(params["exceptionDetails"].get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(json.dumps(params.get("args")))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                errors.append(params["entry"]["text"])
        return errors

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd)


@pytest.fixture
def chromium(tmp_path):
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("Debian's chromium is not installed: `make test` installs it (apt-get install -y chromium)")
    browser = Chromium(binary, str(tmp_path / "profile"))
    yield browser
    browser.close()


IMAGES_JS = "JSON.stringify(Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]))"


def test_report_renders_in_headless_chromium(catalog, chromium, tmp_path):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", "--out", str(out), "--seed", "1", "--catalog", str(catalog)])
    assert result.exit_code == 0, result.output
    session = chromium.open(out.as_uri())

    images = json.loads(chromium.evaluate(session, IMAGES_JS))
    cards = chromium.evaluate(session, "document.querySelectorAll('.card').length")
    thumbs = chromium.evaluate(session, "document.querySelectorAll('.card img').length")
    charts = chromium.evaluate(session, "document.querySelectorAll('img.chart').length")
    assert cards == 3 * 6 + 2  # six per ingested source, plus the one table row and one conversation
    assert thumbs == 3 * 6 + 1 and charts == 5  # the conversation has no image; one chart per source
    assert len(images) == thumbs + charts
    assert all(complete and width > 0 for complete, width, _ in images), images
    assert chromium.console_errors() == []
    # Self-contained: nothing but the file itself and data: URIs was ever requested.
    assert all(u == out.as_uri() or u.startswith("data:") for u in chromium.requested_urls())

    # The table response is rendered as a table; the data's script and handlers never ran.
    assert chromium.evaluate(session, "document.querySelector('.rendered th[rowspan=\"2\"]').textContent") == "Year"
    assert chromium.evaluate(session, "document.querySelectorAll('.rendered [onclick], .card script').length") == 0
    assert chromium.evaluate(session, "typeof window.pwned") == "undefined"
    # The page's own script works: the filter leaves exactly the card of one sample.
    visible = chromium.evaluate(session, """(() => {
        const box = document.getElementById('filter');
        box.value = 'PMC1_table_0';
        box.dispatchEvent(new Event('input'));
        return Array.from(document.querySelectorAll('.card')).filter(c => c.style.display !== 'none').length;
    })()""")
    assert visible == 1

    shot = base64.b64decode(chromium.call("Page.captureScreenshot", {"format": "png"}, session)["data"])
    (tmp_path / "report.png").write_bytes(shot)
    with Image.open(io.BytesIO(shot)) as img:
        assert img.size[0] >= 1000 and len(img.convert("L").getcolors(1 << 16) or []) > 10  # not a blank page


def test_the_chromium_check_can_fail(chromium, tmp_path):
    """The harness sees a script error and a broken image: the report test's checks are not vacuous."""
    page = tmp_path / "broken.html"
    page.write_text('<img alt="bad" src="data:image/png;base64,AAAA"><script>undefinedFunction()</script>')
    session = chromium.open(page.as_uri())
    assert json.loads(chromium.evaluate(session, IMAGES_JS)) == [[True, 0, "bad"]]
    assert any("undefinedFunction" in e or "Uncaught" in e for e in chromium.console_errors())


def gallery_ids(html: str) -> list[str]:
    return re.findall(r"· id (\d+) ·", html)


def test_report_is_self_contained_and_seeded(catalog, tmp_path):
    with Catalog(catalog, read_only=True) as cat:
        a = build_report(cat, tmp_path / "a.html", seed=1, per_source=3).read_text()
        b = build_report(cat, tmp_path / "b.html", seed=1, per_source=3).read_text()
        c = build_report(cat, tmp_path / "c.html", seed=2, per_source=3).read_text()
        chart_ids = {str(i) for (i,) in cat.con.execute("SELECT sample_id FROM samples WHERE source = 'chartqa'").fetchall()}
    assert gallery_ids(a) == gallery_ids(b) and len(gallery_ids(a)) == 3 * 3 + 2
    assert gallery_ids(a) != gallery_ids(c)  # another seed draws another set
    # The draw is MD5("seed:sample_id") order, computable anywhere (not DuckDB's version-bound hash()).
    drawn = sorted(chart_ids, key=lambda i: (hashlib.md5(f"1:{i}".encode()).hexdigest(), int(i)))[:3]
    assert [i for i in gallery_ids(a) if i in chart_ids] == drawn
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", a)
    assert "Mixtures" in a and "Validation" in a and "all " in a


def test_report_shows_mixtures_and_failures(catalog, tmp_path):
    mixtures = pytest.importorskip("ocrcat.mix.mixtures")
    work = tmp_path / "catalog"
    shutil.copytree(catalog, work)
    with Catalog(work) as cat:
        mixtures.create_mixture(cat, "charts", [("chartqa", "source = 'chartqa'", 2),
                                                ("formulas", "source = 'latex_formulas'", 0.5)], seed=4)
        victim = cat.con.execute("SELECT sample_id, image_path FROM samples WHERE source = 'mathwriting' "
                                 "ORDER BY sample_id LIMIT 1").fetchone()
        (work / victim[1]).unlink()
        page = build_report(cat, tmp_path / "r.html", per_source=16).read_text()
        n_chart, n_formula = (cat.con.execute(f"SELECT count(*) FROM samples WHERE source = '{s}'").fetchone()[0]
                              for s in ("chartqa", "latex_formulas"))
    # chartqa twice, half of latex_formulas: its intended share is 2a / (2a + b/2), its plan rows 2a.
    assert "mix_charts" in page and f"{2 * n_chart:,}" in page
    assert f"{2 * n_chart / (2 * n_chart + n_formula / 2):.2%}" in page
    assert 'class="fail"' in page and str(victim[0]) in page
    assert "file missing" in page  # the gallery card of the missing image says why instead of breaking


def test_render_table_html_keeps_tables_and_drops_the_rest():
    html = render_table_html(TABLE + "<a href='javascript:x'>link</a><tr><td>unclosed")
    assert '<th rowspan="2">Year</th>' in html and '<th colspan="2">Sales</th>' in html
    assert "<script" not in html and "onclick" not in html and "<a" not in html
    assert "1 &amp; 2" in html and "window.pwned = 1" in html  # the script's text stays as inert text
    assert html.endswith("<tr><td>unclosed</td></tr>")
    assert render_table_html('<td rowspan="x" colspan="5000">a</td>') == "<td>a</td>"


def test_show_prints_the_row_and_writes_a_quick_look(catalog, tmp_path):
    with Catalog(catalog, read_only=True) as cat:
        sid, path, tokens = cat.con.execute("SELECT sample_id, image_path, image_tokens FROM samples "
                                            "WHERE source = 'chartqa' ORDER BY sample_id LIMIT 1").fetchone()
    out = CliRunner().invoke(app, ["show", str(sid), "--open", "--to", str(tmp_path / "look"), "--json",
                                   "--tokenizer", "byte", "--catalog", str(catalog)])
    assert out.exit_code == 0, out.output
    facts = json.loads(out.output)
    assert facts["sample_id"] == sid and facts["image"]["tokens_by_rule"] == tokens == facts["counts"]["image_tokens"]
    assert facts["counts"]["text_tokens"] == len(facts["text"].replace("<image>", "").encode())
    # <|bos|>, the prompt with the image's tokens, "\n" + response, <|assistant_end|>: one token per byte.
    counts = facts["counts"]
    assert counts["sequence_tokens"] == 1 + tokens + counts["text_tokens"] + 1 + counts["response_tokens"] + 1
    image, text = (tmp_path / "look" / f"{sid}.png"), (tmp_path / "look" / f"{sid}.txt")
    assert image.read_bytes() == (catalog / path).read_bytes()
    assert facts["response"] in text.read_text()

    missing = CliRunner().invoke(app, ["show", "12345", "--catalog", str(catalog)])
    assert missing.exit_code == 2 and "no sample 12345" in missing.output
    bad = CliRunner().invoke(app, ["show", "chart", "--catalog", str(catalog)])
    assert bad.exit_code == 2 and "not a sample id" in bad.output

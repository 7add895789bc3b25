"""Opens the built pkgdown page of optimizer_lion() in headless Chromium.

Usage: python tools/site-test.py [--site docs] [--out .test-results] [--record FILE]

Chromium (Debian's `chromium` package) loads docs/reference/optimizer_lion.html
twice, with a fresh profile and no network (every host name fails to resolve):
once to save a screenshot, once to dump the DOM after its scripts ran. The
checks, each counted as one test:

- the screenshot is a PNG of the whole page and not blank;
- the page has a Usage section whose code is a call of optimizer_lion();
- for every argument of the seed (keras3's optimizer_lion()): the usage shows
  it, with the seed's default, and the Arguments section has an entry for it;
- every argument documented in man/optimizer_lion.Rd has an entry too;
- its keras3 example ran: the Examples section shows evaluate()'s output.

Then, from the built files, each article is on the site with its title,
linked from the home page's navigation bar, and shows what its code printed
(ARTICLES below).

Prints one line per check and exits with 1 if any failed. With --record, it
appends `site-test PASSED FAILED 0` to FILE (the format of run-tests.sh's
counts.txt).
"""

from __future__ import annotations

import argparse
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from collections import Counter
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

# keras3's optimizer_lion(): each argument and its default, in order.
SEED_ARGUMENTS = [
    ("learning_rate", "0.001"),
    ("beta_1", "0.9"),
    ("beta_2", "0.99"),
    ("weight_decay", "NULL"),
    ("clipnorm", "NULL"),
    ("clipvalue", "NULL"),
    ("global_clipnorm", "NULL"),
    ("use_ema", "FALSE"),
    ("ema_momentum", "0.99"),
    ("ema_overwrite_frequency", "NULL"),
    ("name", '"lion"'),
    ("...", None),
    ("loss_scale_factor", "NULL"),
    ("gradient_accumulation_steps", "NULL"),
]

# Each article's page, its title, and a text that its
# page shows only when its code ran (or, for the article that runs nothing,
# a text of its own).
ARTICLES = [
    # Printed by the R session that loads the saved model afresh.
    ("keraslion", "Getting started with keraslion", 'chr "keraslion.lion.Lion"'),
    ("lion-vs-adamw", "Lion vs AdamW on real data", "training runs, which took"),
    ("several-machines", "Training on several machines", "MultiWorkerMirroredStrategy"),
]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--hide-scrollbars",
    # No network at all: the test must not depend on it, and pkgdown's pages
    # link a few scripts from CDNs.
    "--host-resolver-rules=MAP * ~NOTFOUND",
]


def find_chromium() -> str | None:
    """The path of Chromium (or Chrome), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def run_chromium(chromium: str, url: str, extra: list[str], timeout: int = 120) -> str:
    """Runs headless Chromium on `url` with a fresh profile; returns its stdout."""
    with tempfile.TemporaryDirectory(prefix="keraslion-chromium-") as profile:
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited with {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


class Page(HTMLParser):
    """The text of the Usage code and the terms of the Arguments list."""

    def __init__(self) -> None:
        super().__init__()
        self.section: str | None = None
        self.usage_title = False
        self.usage_parts: list[str] = []
        self.in_code = 0
        self.in_dt = False
        self.dt_parts: list[str] = []
        self.argument_terms: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "h2":
            self.section = attributes.get("id")
            if self.section == "ref-usage":
                self.usage_title = True
        elif tag == "code" and self.section == "ref-usage":
            self.in_code += 1
        elif tag == "dt" and self.section == "arguments":
            self.in_dt = True
            self.dt_parts = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "code" and self.in_code:
            self.in_code -= 1
        elif tag == "dt" and self.in_dt:
            self.in_dt = False
            self.argument_terms.append("".join(self.dt_parts).strip())

    def handle_data(self, data: str) -> None:
        if self.in_code:
            self.usage_parts.append(data)
        if self.in_dt:
            self.dt_parts.append(data)

    @property
    def usage(self) -> str:
        return "".join(self.usage_parts)


def png_summary(path: Path) -> tuple[int, int, float]:
    """Width, height and the fraction of pixels that differ from the most common one."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    if header is None:
        raise ValueError("PNG without a header")
    width, height, depth, colour, _, _, interlace = header
    channels = {2: 3, 6: 4, 0: 1, 4: 2}.get(colour)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"unsupported PNG (depth {depth}, colour type {colour})")
    raw = zlib.decompress(idat)
    stride = width * channels
    previous = bytearray(stride)
    colours: Counter[bytes] = Counter()
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + pred) & 0xFF
        colours.update(bytes(line[i : i + channels]) for i in range(0, stride, channels))
        previous = line
    background = colours.most_common(1)[0][1]
    return width, height, 1 - background / (width * height)


def page_text(html: str) -> str:
    """The text of an HTML page: tags dropped, entities decoded, spaces collapsed."""
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.DOTALL)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", text)))


def rd_arguments(path: Path) -> list[str]:
    """The argument names in an Rd file's \\arguments section."""
    text = path.read_text(encoding="utf-8")
    section = text.split("\\arguments{", 1)[-1]
    names = re.findall(r"^\\item\{([^}]*)\}", section, flags=re.MULTILINE)
    return [name.replace("\\dots", "...") for name in names]


def main() -> int:
    """Runs the checks; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="docs", type=Path)
    parser.add_argument("--out", default=".test-results", type=Path)
    parser.add_argument("--rd", default="man/optimizer_lion.Rd", type=Path)
    parser.add_argument("--record", type=Path)
    args = parser.parse_args()

    results: list[tuple[str, bool, str]] = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        results.append((name, ok, detail))

    page = (args.site / "reference" / "optimizer_lion.html").resolve()
    chromium = find_chromium()
    if not page.exists():
        check("page built", False, f"{page} does not exist; run `make site`")
    elif chromium is None:
        check("chromium installed", False, "no chromium on PATH; run tools/setup-apt.sh")
    else:
        url = page.as_uri()
        args.out.mkdir(parents=True, exist_ok=True)
        screenshot = (args.out / "site-optimizer_lion.png").resolve()
        screenshot.unlink(missing_ok=True)
        try:
            run_chromium(chromium, url, [f"--screenshot={screenshot}", "--window-size=1280,3000"])
            width, height, busy = png_summary(screenshot)
            check("screenshot", width == 1280 and height == 3000 and busy > 0.05,
                  f"{screenshot}: {width}x{height}, {busy:.1%} of pixels drawn")
        except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as error:
            check("screenshot", False, str(error))

        try:
            dom = run_chromium(chromium, url, ["--dump-dom"])
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            dom = ""
            check("dump DOM", False, str(error))
        (args.out / "site-optimizer_lion.dom.html").write_text(dom, encoding="utf-8")
        parsed = Page()
        parsed.feed(dom)
        usage = re.sub(r"\s+", " ", parsed.usage)
        check("usage block", parsed.usage_title and usage.startswith("optimizer_lion("),
              usage[:60] + "...")
        terms = set(parsed.argument_terms)
        for argument, default in SEED_ARGUMENTS:
            shown = argument if default is None else f"{argument} = {default}"
            in_usage = re.search(r"[(,]\s*" + re.escape(shown) + r"\s*[,)]", usage) is not None
            check(f"argument {argument}", in_usage and argument in terms,
                  f"usage shows `{shown}`: {in_usage}; documented: {argument in terms}")
        seed_names = {name for name, _ in SEED_ARGUMENTS}
        for argument in rd_arguments(args.rd):
            if argument not in seed_names:
                check(f"argument {argument} (keraslion)", argument in terms,
                      f"documented: {argument in terms}")
        examples = page_text(dom.split('id="ref-examples"', 1)[-1]) if dom else ""
        check("example ran", "#> $accuracy" in examples,
              "the Examples section shows evaluate()'s output"
              if "#> $accuracy" in examples else "no `#> $accuracy` in the Examples section")

    home = args.site / "index.html"
    navbar = home.read_text(encoding="utf-8") if home.exists() else ""
    for name, title, evidence in ARTICLES:
        article = args.site / "articles" / f"{name}.html"
        linked = f'href="articles/{name}.html"' in navbar
        text = page_text(article.read_text(encoding="utf-8")) if article.exists() else ""
        titled, shows = title in text, evidence in text
        check(f"article {name}", linked and titled and shows,
              f"linked from the home page: {linked}; titled: {titled}; shows `{evidence}`: {shows}")

    passed = sum(ok for _, ok, _ in results)
    failed = len(results) - passed
    for name, ok, detail in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name:<45} {detail}")
    print(f"site test: {passed} passed, {failed} failed")
    if args.record:
        with args.record.open("a") as counts:
            counts.write(f"site-test {passed} {failed} 0\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

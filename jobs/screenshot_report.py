"""Screenshot a run report's pairs view (one pair open) in headless Chromium, for the docs.

    python jobs/screenshot_report.py RUN [--pair 3] [--k 2] [--out docs/img/report-pairs.png]

Builds ``RUN/report`` first when it is missing. The PNG is quantized to 256 colours to stay small.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raystep.report import build_report  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run")
    parser.add_argument("--pair", type=int, default=0, help="index of the pair to open (table order)")
    parser.add_argument("--k", type=int, default=None, help="filter the table to this first wrong step")
    parser.add_argument("--tab", default="pairs", help="pairs, overview, collection, training, evaluation")
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--out", default="docs/img/report-pairs.png")
    args = parser.parse_args()
    run = Path(args.run)
    index = run / "report" / "index.html"
    if not index.exists():
        build_report(run)

    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import Select

    with tempfile.TemporaryDirectory() as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or ""
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--window-size=1440,{args.height}",
            f"--user-data-dir={profile}",
        ):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or ""), options=options)
        try:
            driver.get(index.as_uri() + "#" + args.tab)
            time.sleep(0.5)
            if args.tab == "pairs":
                Select(driver.find_element("id", "page-size")).select_by_value("25")
                if args.k is not None:
                    Select(driver.find_element("id", "filter-k")).select_by_value(str(args.k))
                driver.execute_script("document.querySelector('.table-wrap').style.maxHeight = '330px';")
                rows = driver.find_elements("css selector", "tr.pair-row")
                rows[min(args.pair, len(rows) - 1)].click()
                time.sleep(0.5)
                driver.execute_script(
                    "window.scrollTo(0, 0); document.querySelector('.table-wrap').scrollLeft = 0;"
                )
            time.sleep(0.3)
            raw = Path(profile) / "shot.png"
            driver.save_screenshot(str(raw))
        finally:
            driver.quit()
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(raw).convert("RGB").quantize(colors=256).save(out, optimize=True)
    print(f"{out}: {out.stat().st_size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

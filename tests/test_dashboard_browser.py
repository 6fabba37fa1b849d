"""The dashboard page in a real headless Chromium: numbers and charts appear and follow the file.

One live page is driven over the DevTools pipe (tests/browser.py) while the test rewrites
stats.json behind it: missing file, a full stats.json, an update, a contract-only file from
another trainer, integers written as floats, a half-written file, an old timestamp, a
symlink in place of the file; and a history too long for a spread into Math.min. Needs
Debian's `chromium` package; skips without it. Set DASHBOARD_SCREENSHOT=/path.png to keep a screenshot of the page.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser import INSTALL_HINT, HeadlessChromium, find_chromium  # noqa: E402
from test_dashboard import sample_stats  # noqa: E402

from trainer.atomic_files import atomic_write_json  # noqa: E402
from trainer.dashboard.server import serve_in_thread  # noqa: E402

pytestmark = pytest.mark.skipif(find_chromium() is None, reason=f"no chromium binary: {INSTALL_HINT}")

WAIT_S = 8  # a poll is every 300 ms here; generous for a loaded 2-core machine


def js_text(element_id: str) -> str:
    return f"(document.getElementById({json.dumps(element_id)}) || {{}}).textContent"


def wait_text(page, element_id: str, expected: str) -> None:
    page.wait_for(f"{js_text(element_id)} === {json.dumps(expected)}", timeout=WAIT_S)


def test_page_shows_stats_and_follows_the_file(tmp_path):
    stats = tmp_path / "stats.json"
    server = serve_in_thread(stats)
    try:
        with HeadlessChromium(window_size=(1280, 900)) as browser:
            page = browser.open(server.url + "?poll=300")

            # 1. No stats.json yet: a clear waiting state, placeholders, empty charts.
            page.wait_for("!document.getElementById('banner').hidden", timeout=WAIT_S)
            assert "waiting for stats.json" in page.text("banner")
            assert page.text("v-step") == "—"

            # 2. A full stats.json: numbers, state, charts, tables.
            first = sample_stats(step=1200, n_history=300, n_eval=12)
            first["learning_rate"] = 1.5e-3
            atomic_write_json(stats, first)
            wait_text(page, "v-step", "1,200")
            assert page.evaluate("document.getElementById('banner').hidden") is True
            assert page.text("v-total_steps") == "5,000"
            assert page.text("state-badge") == "training"
            assert page.text("v-state_reason") == "training on 20000 of 48211 rows"
            assert page.text("v-samples_per_sec") == "5,123"
            assert page.text("v-wait_fraction") == "12.5 %"
            assert page.text("v-window_size") == "20,000"
            assert page.text("v-replay_buffer_size") == "48,211"
            assert page.text("v-actor_model_step") == "1,000"
            assert page.text("v-bad_rows") == "3"
            assert page.text("v-newest_row_age_s") == "1.5 s"
            assert page.text("v-reuse_ratio") == "3.2"
            assert page.text("v-learning_rate") == "1.50e-3"
            assert page.evaluate("document.getElementById('chart-lr').dataset.points") == "300"
            assert (
                page.evaluate("document.querySelectorAll('#chart-lr svg path[data-series=lr]').length") == 1
            )
            assert page.text("progress-pct") == "24.0 %"
            assert page.evaluate("document.getElementById('progress-fill').style.width") == "24%"
            assert page.evaluate("document.querySelectorAll('#chart-loss svg path').length") == 3
            assert page.evaluate("document.getElementById('chart-loss').dataset.points") == "900"
            assert page.evaluate("document.getElementById('chart-eval').dataset.points") == "36"
            assert page.evaluate("document.querySelectorAll('#chart-eval svg path').length") == 3
            assert (
                page.evaluate("document.querySelector('#last-eval [data-key=win]').textContent") == "93.5 %"
            )
            assert (
                page.evaluate("document.querySelector('#metrics [data-key=val_loss]').textContent") == "1.01"
            )
            assert page.evaluate("document.getElementById('stale-badge').hidden") is True

            if os.environ.get("DASHBOARD_SCREENSHOT"):
                page.screenshot(os.environ["DASHBOARD_SCREENSHOT"])
                page.call(
                    "Emulation.setDeviceMetricsOverride",
                    {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                )

            # 3. The file changes: the same page follows without a reload.
            newer = sample_stats(step=2400, n_history=400, n_eval=20)
            newer.update(state="publishing", state_reason="publishing step 2400", samples_per_sec=4000.0)
            atomic_write_json(stats, newer)
            wait_text(page, "v-step", "2,400")
            assert page.text("state-badge") == "publishing"
            assert page.text("v-samples_per_sec") == "4,000"
            page.wait_for("document.getElementById('chart-loss').dataset.points === '1200'", timeout=WAIT_S)

            # 4. A half-written file: a clear message, and the last good numbers stay.
            full = json.dumps(newer)
            stats.write_text(full[: len(full) // 3])
            page.wait_for(f"{js_text('banner')}.includes('stats unreadable, retrying')", timeout=WAIT_S)
            assert page.text("v-step") == "2,400"

            # 5. A file from another trainer of the family: only the contract's keys.
            atomic_write_json(stats, sample_stats(step=3000, extras=False))
            wait_text(page, "v-step", "3,000")
            assert page.evaluate("document.getElementById('banner').hidden") is True
            for key in (
                "samples_per_sec",
                "wait_fraction",
                "window_size",
                "actor_model_step",
                "newest_row_age_s",
                "bad_rows",
                "rss_mb",
                "trainer_version",
            ):
                assert page.text(f"v-{key}") == "—", key
            assert page.text("state-badge") == "—"
            assert page.text("v-replay_buffer_size") == "48,211"
            assert page.evaluate("document.querySelectorAll('#chart-loss svg path').length") == 3

            # 6. Integer fields written as floats ("step": 3050.0, as some writers do) still
            # read as integers, here and in the charts.
            floats = sample_stats(step=3050, n_history=50, n_eval=5)
            for key in (
                "step",
                "total_steps",
                "samples_seen",
                "replay_buffer_size",
                "bad_rows",
                "actor_model_step",
                "window_size",
                "rows_seen",
                "publish_failures",
            ):
                floats[key] = float(floats[key])
            for entry in floats["history"] + floats["eval_history"]:
                entry["step"] = float(entry["step"])
            floats["eval_history"][-1]["games_played"] = 50.0
            floats["last_eval"] = floats["eval_history"][-1]
            assert '"step": 3050.0' in json.dumps(floats)
            atomic_write_json(stats, floats)
            wait_text(page, "v-step", "3,050")
            assert page.text("v-total_steps") == "5,000"
            assert page.text("v-samples_seen") == "780,800"
            assert page.text("v-replay_buffer_size") == "48,211"
            assert page.text("v-bad_rows") == "3"
            assert page.text("v-actor_lag") == "200"
            assert page.text("progress-pct") == "61.0 %"
            assert (
                page.evaluate("document.querySelector('#last-eval [data-key=\"at step\"]').textContent")
                == "3,050"
            )
            assert page.evaluate("document.querySelector('#last-eval [data-key=games]').textContent") == "50"
            assert page.evaluate("document.getElementById('chart-loss').dataset.points") == "150"

            # 7. An old timestamp is called stale; a missing file says so again.
            old = sample_stats(step=3100)
            old["timestamp"] = time.time() - 3600
            atomic_write_json(stats, old)
            wait_text(page, "v-step", "3,100")
            page.wait_for("!document.getElementById('stale-badge').hidden", timeout=WAIT_S)

            # 8. A symlink in place of stats.json is not followed: the page says why and keeps
            # the last good numbers rather than showing the other file.
            outside = tmp_path / "other-run" / "stats.json"
            outside.parent.mkdir()
            atomic_write_json(outside, sample_stats(step=4444))
            stats.unlink()
            stats.symlink_to(outside)
            page.wait_for(f"{js_text('banner')}.includes('is a symbolic link; not followed')", timeout=WAIT_S)
            assert page.text("v-step") == "3,100"

            stats.unlink()
            page.wait_for(f"{js_text('banner')}.includes('waiting for stats.json')", timeout=WAIT_S)

            errors = [m for m in browser.console if m.startswith("exception")]
            assert not errors, errors
    finally:
        server.shutdown()
        server.server_close()


def test_page_draws_a_very_long_history(tmp_path):
    # 150,000 history entries, 450,000 points in the loss chart: Math.min(...points) throws
    # RangeError past ~125k arguments in Chromium, which lost the whole render.
    n = 150_000
    stats = tmp_path / "stats.json"
    big = sample_stats(step=n, total_steps=2 * n, n_history=n, n_eval=3)
    atomic_write_json(stats, big)
    server = serve_in_thread(stats)
    try:
        with HeadlessChromium(window_size=(1280, 900)) as browser:
            page = browser.open(server.url + "?poll=2000")
            # Generous: the server re-serialises ~15 MB per poll on a loaded machine.
            page.wait_for(f"document.getElementById('chart-loss').dataset.points === '{3 * n}'", timeout=40)
            assert page.text("v-step") == "150,000"
            assert page.evaluate("document.getElementById('chart-lr').dataset.points") == str(n)
            assert page.evaluate("document.querySelectorAll('#chart-loss svg path').length") == 3
            # The x axis spans the whole history: its last tick label is near the last step.
            assert page.evaluate(
                "[...document.querySelectorAll('#chart-loss svg text')].some((t) => t.textContent === '150k')"
            )
            assert page.evaluate("document.getElementById('banner').hidden") is True
            errors = [m for m in browser.console if m.startswith("exception")]
            assert not errors, errors
    finally:
        server.shutdown()
        server.server_close()

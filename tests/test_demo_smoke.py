"""The zero-setup demo (`make run`: SQLite, no broker server) walks the README flow."""

import os
import subprocess
import sys

from django.conf import settings


def test_readme_flow_on_sqlite(localstripe_url, tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        "REDIS_URL": "",
        "VAR_DIR": str(tmp_path),
        "STRIPE_API_BASE": localstripe_url,
        "STRIPE_SECRET_KEY": "",
        "LOG_LEVEL": "WARNING",
    }

    result = subprocess.run(
        [sys.executable, "-m", "devtools.demo_smoke"],
        env=env,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "demo flow ok" in result.stdout

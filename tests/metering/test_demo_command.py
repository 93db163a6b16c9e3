"""`metering demo`, run twice in a row on the real stack (smaller than `make demo`'s
default, in private topics, Redis keys, consumer groups and var dir)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import redis

from metering.documents.records import parse_body
from tests.conftest import RunningStack

ORGS = 8  # 2 per plan × billing mode
METERING = str(Path(sys.executable).parent / "metering")


def _demo(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [METERING, "demo", "--orgs", str(ORGS), "--members", "4", "--events", "3000"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_the_demo_runs_twice_and_leaves_documents_and_usage_pages(
    stack: RunningStack, tmp_path: Path
) -> None:
    name = f"demotest{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "METERING_VAR_DIR": str(tmp_path / "var"),
        "METERING_TOPIC_NAMESPACE": name,
        "METERING_REDIS_PREFIX": f"{name}:",
        "METERING_GROUP_ID": f"{name}-enforcement",
        "METERING_SINK_GROUP_ID": f"{name}-sink",
        "COLUMNS": "200",
    }
    try:
        first = _demo(env, tmp_path)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        second = _demo(env, tmp_path)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    finally:
        client = redis.Redis.from_url(stack.settings.redis_url)
        keys = list(client.scan_iter(match=f"{name}:*", count=1000))
        if keys:
            client.delete(*keys)
        topics = [t for t in stack.admin.list_topics(timeout=10).topics if t.startswith(name)]
        if topics:
            for future in stack.admin.delete_topics(topics).values():
                future.result(timeout=30)

    demo = tmp_path / "var" / "demo"
    [month_dir] = (demo / "documents").iterdir()
    documents = [parse_body(p.read_text()) for p in month_dir.glob("*.json")]
    # Each run bills its own orgs: one usage document each (statement or invoice), and a
    # monthly seat invoice for each seat-based org: both runs' documents are there.
    usage = [d for d in documents if d.kind.value in ("credit_statement", "usage_invoice")]
    assert len(usage) == 2 * ORGS
    assert len({d.org_id for d in usage}) == 2 * ORGS
    assert {d.kind.value for d in documents} >= {
        "credit_statement",
        "usage_invoice",
        "seat_invoice",
    }
    assert all(p.with_suffix(".html").exists() for p in month_dir.glob("*.json"))
    pages = list(demo.glob("usage-*.html"))
    assert len(pages) == 2 * 4 * 2  # 2 runs × one org per plan × mode × 2 months
    assert all("<html" in p.read_text().lower() for p in pages)
    # The poison events were dead-lettered, not lost: the summary line says so.
    assert "30 dead-lettered" in " ".join(second.stdout.split())

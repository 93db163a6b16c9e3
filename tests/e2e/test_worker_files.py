"""Where a worker leaves files: faust's local data folder (`<group>-data/`) belongs under
METERING_VAR_DIR with the rest of the local data, not in whatever directory the worker
was started from (a clone after the test suite used to hold dozens of them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RunningStack
from tests.e2e.pipeline import cleanup, new_pipeline
from tests.e2e.scenario import new_org

pytestmark = pytest.mark.stack


def test_a_worker_keeps_faust_data_under_the_var_dir_not_in_its_working_directory(
    stack: RunningStack, tmp_path: Path
) -> None:
    # Given a private pipeline, and a worker started in an empty directory of its own
    # with METERING_VAR_DIR elsewhere
    pipeline = new_pipeline(stack.settings, tmp_path)
    workdir, var_dir = tmp_path / "workdir", tmp_path / "var"
    workdir.mkdir()
    try:
        with pipeline.log_path.open("ab") as log:
            pipeline.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "metering"), "worker"],
                cwd=workdir,
                env={**os.environ, **pipeline.env(), "METERING_VAR_DIR": str(var_dir)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        # When it has run its faust app (it applied an account event) and stopped
        pipeline.send_accounts(*new_org("org_files"))
        pipeline.wait_for_gate("org_files", "u1", None)
        pipeline.stop_worker()

        # Then its working directory holds nothing, and faust's folder is under the var dir
        assert sorted(p.name for p in workdir.iterdir()) == []
        assert (var_dir / "faust" / f"{pipeline.settings.group_id}-data").is_dir()
    finally:
        cleanup(pipeline)

"""A stand-in stage for the scheduler's tests (python -m tests.fake_stage <job.json>): it records when it ran in
its folder, then finishes after `seconds`, or fails (exit 1) when its stage name starts with "fail"."""

import json
import sys
import time
from pathlib import Path

job = json.loads(Path(sys.argv[1]).read_text())
out = Path(job["out"])
(out / "started").write_text(str(time.time()))
seconds = job["config"]["seed"] / 10 if job["stage"] != "slow" else 30
time.sleep(0.5 if job["stage"].startswith("fail") else seconds)
if job["stage"].startswith("fail"):
    sys.exit(1)
(out / "metrics.json").write_text(json.dumps({"ended": time.time()}))

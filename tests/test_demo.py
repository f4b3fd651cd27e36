"""`make demo`'s job end to end on the bundled corpus (shortened to 4 steps), and how it reports a failing step."""

import os
from pathlib import Path

import pytest

from launcher import demo
from sa_megatron.training.distributed import TORCHRUN_VARS

SHARED_DATA = Path(demo.REPO).parent / "shared" / "data"

pytestmark = pytest.mark.skipif(
    not (os.environ.get("SA_MEGATRON_DATA") or (SHARED_DATA / "tinyshakespeare" / "input.txt").is_file()),
    reason="no local corpus: the demo would download tinyshakespeare")


def test_demo_trains_evaluates_samples_and_reports_failures_in_one_line(tmp_path, capfd, monkeypatch):
    # As from a fresh shell: not inside the 1-rank world other tests set up in this process, nor the interpreter.
    for name in (*TORCHRUN_VARS, "TRITON_INTERPRET"):
        monkeypatch.delenv(name, raising=False)
    work = tmp_path / "demo"
    quick = ["--work-dir", str(work), "--set", "training.train_iters=4", "--set", "training.eval_interval=2",
             "--set", "checkpoint.save_interval=2", "--set", "logging.log_interval=2"]
    assert demo.main(quick) == 0
    out = capfd.readouterr().out
    for expected in ("$ sa-megatron train", "eval at step 4", "$ sa-megatron eval", "$ sa-megatron generate",
                     "ROMEO:", f"--logdir {work / 'tensorboard'}"):
        assert expected in out, out[-3000:]
    assert (work / "checkpoints" / "step_4" / "COMPLETE").is_file()

    # The same save_dir with another model shape: `train` refuses it (exit 2) and the demo stops there.
    assert demo.main(quick + ["--set", "model.hidden_size=64"]) == 2
    captured = capfd.readouterr()
    assert "demo: `sa-megatron train` failed with exit code 2" in captured.err
    assert "$ sa-megatron eval" not in captured.out

    assert demo.main(["--work-dir", str(work), "--set", "training.train_iters=-1"]) == 2
    (line,) = capfd.readouterr().err.strip().splitlines()
    assert line.startswith("demo: error:") and "train_iters" in line

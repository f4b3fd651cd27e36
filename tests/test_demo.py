"""`make demo`'s job end to end on the bundled corpus (shortened to 4 steps), how it reports a failing step, and
what a re-run reuses."""

import os
from pathlib import Path

import pytest

from launcher import demo
from sa_megatron.config import load_config
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

    # A re-run needs no corpus (the prepared data is reused) and skips eval and generate, whose outputs are current.
    monkeypatch.setenv("SA_MEGATRON_DATA", str(tmp_path / "no-corpus-here"))
    assert demo.main(quick) == 0
    out = capfd.readouterr().out
    assert f"Using the corpus prepared in {work / 'data'}" in out, out[-3000:]
    assert f"eval: skipped, {work / 'eval.json'} is current (written after step_4, same arguments)" in out
    assert f"generate: skipped, {work / 'generate.log'} is current" in out
    assert "$ sa-megatron eval" not in out and "$ sa-megatron generate" not in out
    assert "ROMEO:" in (work / "generate.log").read_text()

    # The same save_dir with another model shape: `train` refuses it (exit 2) and the demo stops there.
    assert demo.main(quick + ["--set", "model.hidden_size=64"]) == 2
    captured = capfd.readouterr()
    assert "demo: `sa-megatron train` failed with exit code 2" in captured.err
    assert "$ sa-megatron eval" not in captured.out

    assert demo.main(["--work-dir", str(work), "--set", "training.train_iters=-1"]) == 2
    (line,) = capfd.readouterr().err.strip().splitlines()
    assert line.startswith("demo: error:") and "train_iters" in line


def test_prepared_data_is_reused_only_while_the_sidecars_match_the_tokenizer(tmp_path):
    config = load_config([demo.DEMO_CONFIG], [])
    data = tmp_path / "data"
    prepared = demo.demo_data(data, config, None)
    assert demo.prepared_data(data, config) == prepared
    assert demo.prepared_data(data, load_config([demo.DEMO_CONFIG], ["tokenizer.vocab_size=1024"])) is None

    tokenizer, train_prefix, _ = prepared
    train_bin = Path(f"{train_prefix}.bin")
    whole = train_bin.read_bytes()
    train_bin.write_bytes(whole[:-2])  # a truncated dataset
    assert demo.prepared_data(data, config) is None
    train_bin.write_bytes(whole)
    assert demo.prepared_data(data, config) == prepared
    tokenizer.write_bytes(tokenizer.read_bytes() + b"\0")  # another tokenizer than the one the data was made with
    assert demo.prepared_data(data, config) is None


def test_eval_and_generate_run_again_only_for_new_arguments_or_a_newer_checkpoint(tmp_path, monkeypatch, capsys):
    checkpoints, output = tmp_path / "checkpoints", tmp_path / "eval.json"
    (checkpoints / "step_2").mkdir(parents=True)
    (checkpoints / "step_2" / "COMPLETE").touch()
    runs = []

    def fake_run(*args, stdout_copy=None):
        runs.append(args)
        output.write_text("{}")

    monkeypatch.setattr(demo, "run", fake_run)
    demo.run_unless_current(output, checkpoints, "eval", "--lengths", "8")
    demo.run_unless_current(output, checkpoints, "eval", "--lengths", "8")
    assert len(runs) == 1
    skipped = f"eval: skipped, {output} is current (written after step_2, same arguments)"
    assert capsys.readouterr().out.strip() == skipped
    demo.run_unless_current(output, checkpoints, "eval", "--lengths", "16")
    assert len(runs) == 2

    (checkpoints / "step_4").mkdir()
    (checkpoints / "step_4" / "COMPLETE").touch()
    stamp_time = (tmp_path / "eval.json.args.json").stat().st_mtime
    os.utime(checkpoints / "step_4" / "COMPLETE", (stamp_time + 1, stamp_time + 1))
    demo.run_unless_current(output, checkpoints, "eval", "--lengths", "16")
    assert len(runs) == 3

"""`sa-megatron study` end to end on a 2×2 grid of 4-step runs: the real trainer, eval and report, in process."""

import json

import pytest
import yaml

from launcher.cli import main as cli_main
from sa_megatron.study.runner import plan
from sa_megatron.study.spec import load_study
from sa_megatron.training.distributed import free_port
from sa_megatron.training.loop import train
from tests.training.tiny_run import SHAKESPEARE, corpus_text, tiny_config_dict

pytestmark = pytest.mark.usefixtures("one_rank_world")

RUNS = ["softmax-rope-s1", "softmax-alibi-s1", "sa-rope-s1", "sa-alibi-s1"]
PLOTS = ["ppl_vs_length.png", "training_loss.png", "row_mass.png", "qk_grad_norm.png"]


def fresh_rendezvous() -> None:
    """`study` ends the process group its runs created; the next run meets on a new port."""
    import os

    import torch.distributed as dist

    if not dist.is_initialized():
        os.environ["MASTER_PORT"] = str(free_port())


def main(argv):
    fresh_rendezvous()
    try:
        return cli_main(argv)
    finally:
        fresh_rendezvous()  # for the session's later tests that train in this process


@pytest.fixture(scope="module")
def held_out(corpus, tmp_path_factory):
    """Text the corpus does not hold (the next part of the play), tokenized with the corpus's tokenizer."""
    from sa_megatron.data.preprocess import preprocess

    work = tmp_path_factory.mktemp("held-out")
    text = work / "held_out.txt"
    source = SHAKESPEARE.read_text(encoding="utf-8")[60_000:75_000] if SHAKESPEARE.is_file() else corpus_text()[::-1]
    text.write_text(source, encoding="utf-8")
    preprocess([text], corpus[0], work / "held_out", doc_boundary="blank-line", show_progress=False)
    return str(work / "held_out")


def write_study(path, corpus, held_out, study_dir, grid=None, **extra):
    config = tiny_config_dict(*corpus, schedule={"warmup_iters": 2, "decay_iters": 10},
                              checkpoint={"save_interval": 2}, logging={"log_interval": 2})
    study = {"name": "tiny", "config": config, "study_dir": str(study_dir),
             "grid": grid or {"attention": ["softmax", "sa"], "position_encoding": ["rope", "alibi"], "seed": [1]},
             "eval": {"data": held_out, "multiples": [1, 4, 16], "score_last": 16, "eval_tokens": 1024}, **extra}
    path.write_text(yaml.safe_dump(study))
    return str(path)


@pytest.fixture(scope="module")
def finished(corpus, held_out, tmp_path_factory):
    """A study run to the end once: (study file, study dir, what the command printed)."""
    import contextlib
    import io

    work = tmp_path_factory.mktemp("study")
    path = write_study(work / "study.yaml", corpus, held_out, work / "out")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["study", path]) == 0
    return path, work / "out", printed.getvalue()


def test_trains_evaluates_and_reports(finished):
    _, study_dir, printed = finished
    for index, name in enumerate(RUNS, 1):
        assert f"[{index}/4] {name}: training (4 steps)" in printed
        results = json.loads((study_dir / "runs" / name / "eval.json").read_text())
        assert [r["length"] for r in results["whole"]] == [32, 128, 512]
        assert [r["scored_tokens"] for r in results["last"]] == [32 * 16, 8 * 16, 2 * 16]
        assert (study_dir / "tensorboard" / name).is_dir()
    report = (study_dir / "report.md").read_text()
    assert "| PE | attention | 32 | 128 | 512 |" in report and "| alibi | sa | " in report
    assert "## What this shows" in report and "one seed per configuration" in report
    assert "Partial report" not in report
    for name in PLOTS:
        assert (study_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{name}]({name})" in report


def test_second_invocation_skips_finished_runs(finished, capsys):
    path, _, _ = finished
    assert main(["study", path]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier, skipped") == 4 and "training" not in printed


def test_interrupted_run_resumes_where_it_stopped(finished, corpus, held_out, tmp_path, capsys):
    _, study_dir, _ = finished
    path = write_study(tmp_path / "study.yaml", corpus, held_out, tmp_path / "out")
    (run,) = plan(load_study(path), [r for r in load_study(path).runs if r.name == "sa-rope-s1"], {})
    run.config.training.train_iters = 2  # the same run, stopped after its step-2 checkpoint
    fresh_rendezvous()
    train(run.config)
    assert not (run.run_dir / "eval.json").exists()

    assert main(["study", path, "--only", "sa-rope"]) == 0
    assert "[1/1] sa-rope-s1: resuming at step 2 (4 steps)" in capsys.readouterr().out
    losses = [json.loads(line) for line in (run.save_dir / "losses.jsonl").read_text().splitlines()]
    straight = [json.loads(line) for line in
                (study_dir / "runs" / "sa-rope-s1" / "checkpoints" / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses] == [1, 2, 3, 4]
    assert [r["loss"] for r in losses] == [r["loss"] for r in straight]  # the resume is exact


def test_report_numbers_are_what_sa_megatron_eval_prints(finished, held_out, tmp_path, capsys):
    _, study_dir, _ = finished
    report = (study_dir / "report.md").read_text()
    run_dir = study_dir / "runs" / "sa-alibi-s1"
    recorded = json.loads((run_dir / "eval.json").read_text())
    for mode, score_last in (("whole", []), ("last", ["--score-last", "16"])):
        cells = []
        for r in recorded[mode]:
            output = tmp_path / f"{mode}-{r['length']}.json"
            assert main(["eval", "--load", str(run_dir / "checkpoints"), "--data", held_out, "--lengths",
                         str(r["length"]), "--max-windows", str(r["max_windows"]), "--batch-size",
                         str(r["batch_size"]), "--output", str(output), *score_last]) == 0
            (expected,) = json.loads(output.read_text())["results"]
            assert r["ppl"] == expected["ppl"] and r["scored_tokens"] == expected["scored_tokens"]
            assert f"{expected['ppl']:>10.2f}" in capsys.readouterr().out
            cells.append(f"{expected['ppl']:.2f}")
        # One seed: the table cell is the number itself (bold when best).
        row = next(line for line in report.split(f"Perplexity, {'whole' if mode == 'whole' else 'last'}")[1]
                   .splitlines() if line.startswith("| alibi | sa |"))
        assert [cell.strip("* ") for cell in row.strip("|").split("|")[2:]] == cells


@pytest.mark.parametrize("content, message", [
    ("grid: [attention\n", "invalid YAML"),
    ("grid:\n  model.atention: [sa]\n", "unknown grid key 'model.atention'; did you mean 'model.attention'?"),
    ("grid:\n  attention: sa\n", "grid key 'attention' must list one or more values"),
    ("grid:\n  attention: [sa, flash]\n", "run flash: model.attention must be one of"),
    ("grdi:\n  attention: [sa]\n", "tiny.yaml: unknown top-level key 'grdi'; did you mean 'grid'?"),
])
def test_bad_study_file_is_one_line_error_before_training(content, message, corpus, held_out, tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    if "grid:" in content:
        write_study(path, corpus, held_out, tmp_path / "out")
        study = yaml.safe_load(path.read_text())
        study.pop("grid")
        path.write_text(yaml.safe_dump(study) + content)
    else:
        path.write_text(content)
    assert main(["study", str(path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("sa-megatron study: error: ") and error.count("\n") == 1 and message in error
    assert not (tmp_path / "out").exists()


def test_slurm_dry_run_writes_one_array_of_the_unfinished_runs(finished, corpus, held_out, tmp_path, capsys):
    import subprocess

    path, study_dir, _ = finished
    assert main(["study", path, "--slurm", "--dry-run", "--time", "1:00:00"]) == 0
    assert "every selected run is trained" in capsys.readouterr().out

    fresh = write_study(tmp_path / "study.yaml", corpus, held_out, tmp_path / "out")
    assert main(["study", fresh, "--slurm", "--dry-run", "--time", "1:00:00", "--gpus-per-node", "0",
                 "--only", "alibi"]) == 0
    printed = capsys.readouterr().out
    slurm_dir = tmp_path / "out" / "slurm"
    assert "2 run(s) as array tasks 0-1: softmax-alibi-s1, sa-alibi-s1" in printed
    assert f"dry run, not submitted: sbatch --parsable {slurm_dir}/study.sbatch {slurm_dir}/configs.txt" in printed
    script = (slurm_dir / "study.sbatch").read_text()
    assert "#SBATCH --array=0-1" in script and "#SBATCH --time=1:00:00" in script and "--gpus-per-node" not in script
    assert 'exec "$0" -m launcher.cli train "$@"' in script  # the same launch as `slurm submit`
    subprocess.run(["bash", "-n", str(slurm_dir / "study.sbatch")], check=True)
    configs = (slurm_dir / "configs.txt").read_text().split()
    assert configs == [str(tmp_path / "out" / "runs" / name / "config.yaml") for name in ("softmax-alibi-s1", "sa-alibi-s1")]
    second = yaml.safe_load(open(configs[1]))
    assert second["model"]["attention"] == "sa" and second["model"]["position_encoding"] == "alibi"
    assert second["checkpoint"]["save_dir"] == str(tmp_path / "out" / "runs" / "sa-alibi-s1" / "checkpoints")
    # Task i reads line i+1: what the script's own line selects.
    (pick,) = [line for line in script.splitlines() if "SLURM_ARRAY_TASK_ID" in line]
    picked = subprocess.run(["bash", "-c", f'{pick}\necho "$1"', "script", str(slurm_dir / "configs.txt")],
                            env={"SLURM_ARRAY_TASK_ID": "1", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert picked.stdout.strip() == configs[1]

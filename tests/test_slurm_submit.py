"""`sa-megatron slurm submit --dry-run`: what lands in the run folder, and what is refused before anything is
submitted (the jobs themselves run in tests/training/test_slurm.py and test_slurm_2node.py)."""

import subprocess

import yaml

from launcher.cli import main

ODD = """/data/a b/"q" 'x' $(touch /tmp/PWNED) `id`"""


def submit(tmp_path, *extra, configs=()):
    return main(["slurm", "submit", *configs, "--set", "model.num_attention_heads=4", *extra, "--time", "1:00:00",
                 "--run-dir", str(tmp_path / "run dir"), "--dry-run"])


def test_dry_run_writes_the_resolved_config_and_a_script_without_config_values(tmp_path, capsys):
    (tmp_path / "in.yaml").write_text(yaml.safe_dump({"data": {"paths": [ODD]}}))
    code = submit(tmp_path, "--set", "parallel.tensor_parallel=2", "--set", "training.global_batch_size=16",
                  "--set", "logging.tensorboard_dir=/tb $(id) x",
                  "--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu", "--signal-lead", "600",
                  "--max-restarts", "3", configs=[str(tmp_path / "in.yaml")])
    assert code == 0
    run = tmp_path / "run dir"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["paths"] == [ODD]  # arrives as written
    assert config["logging"]["tensorboard_dir"] == "/tb $(id) x"
    assert config["checkpoint"]["save_dir"] == str(run / "checkpoints")
    script = (run / "train.sbatch").read_text()
    assert "PWNED" not in script and "$(id)" not in script
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --signal=USR1@600", "#SBATCH --requeue", "#SBATCH --open-mode=append",
                 f'#SBATCH --output="{run}/slurm-%j.out"', "#SBATCH --partition=gpu", "#SBATCH --time=1:00:00",
                 "export SA_MEGATRON_MAX_RESTARTS=3"):
        assert line in script.splitlines(), line
    assert subprocess.run(["bash", "-n", str(run / "train.sbatch")]).returncode == 0
    out = capsys.readouterr().out
    assert "dry run, not submitted: sbatch --parsable" in out and "config.yaml" in out


def test_layouts_that_do_not_fit_are_refused_before_submitting(tmp_path, capsys):
    # tensor_parallel must divide the ranks of one node
    assert submit(tmp_path, "--set", "parallel.tensor_parallel=4", "--nodes", "2", "--gpus-per-node", "2") == 2
    assert "parallel.tensor_parallel=4 must divide the 2 ranks per node" in capsys.readouterr().err
    # tensor × pipeline must divide nodes × ranks per node (validate's own message)
    assert submit(tmp_path, "--set", "parallel.pipeline_parallel=2", "--set", "model.num_layers=2",
                  "--nodes", "3", "--gpus-per-node", "0", "--ntasks-per-node", "1") == 2
    assert "world size 3 is not tensor_parallel × pipeline_parallel" in capsys.readouterr().err
    # a CPU cluster must say how many ranks per node
    assert submit(tmp_path, "--nodes", "2", "--gpus-per-node", "0") == 2
    assert "--ntasks-per-node" in capsys.readouterr().err
    assert not (tmp_path / "run dir").exists()

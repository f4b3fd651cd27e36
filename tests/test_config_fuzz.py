"""Every config field, generated from the schema, with a wrong type, a negative, zero, NaN and a huge value: the CLI
exits 2 with one stderr line naming the field (no traceback) whenever the value is not valid, and `config show` and
`train` refuse the same configs with the same message."""
import dataclasses
import subprocess
import sys
import typing

import pytest

from launcher.cli import main
from sa_megatron.config.schema import SECTIONS
from tests.training.launch import REPO, child_env

NUMERIC_VALUES = {"negative": -1, "zero": 0, "nan": "nan", "huge": 10**30}


def _fields():
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            yield section, field, hints[field.name]


def _number_type(hint):
    """int or float for a numeric field (Optional or not), else None."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return args[0] if args[0] in (int, float) else None


def _cases():
    for section, field, hint in _fields():
        name = f"{section}.{field.name}"
        yield pytest.param(name, "{x: 1}", True, id=f"{name}=wrong-type")
        number = _number_type(hint)
        for label, value in NUMERIC_VALUES.items():
            if number is None:
                # No number is a bool, a choice, a string or a list; 'nan' is a string (a path may be called so).
                invalid = not (value == "nan" and str in (typing.get_args(hint) or (hint,)))
            elif value == "nan":
                invalid = True  # a float field reads 'nan' as NaN, an int field refuses the string
            else:
                invalid = (number is float and value == 10**30) or value not in field.metadata["valid"]
            text = "1e300" if (label == "huge" and number is float) else str(value)
            yield pytest.param(name, text, invalid, id=f"{name}={label}")


def show(capsys, *overrides):
    code = main(["config", "show", *[arg for item in overrides for arg in ("--set", item)]])
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("name,value,invalid", list(_cases()))
def test_every_field_refuses_bad_values_in_one_line(name, value, invalid, capsys):
    code, err = show(capsys, f"{name}={value}")
    assert "Traceback" not in err
    if invalid:
        assert code == 2, f"{name}={value} was accepted"
        lines = err.strip().splitlines()
        assert len(lines) == 1 and name.split(".")[1] in lines[0], err
    else:
        # A valid value may still break a rule between fields (eval_iters=0 while eval_interval > 0): one line too.
        assert code == 0 or (code == 2 and len(err.strip().splitlines()) == 1), err


def test_every_numeric_field_states_its_range():
    missing = [f"{s}.{f.name}" for s, f, hint in _fields() if _number_type(hint) and not f.metadata.get("valid")]
    assert not missing


def test_duplicate_keys_and_empty_files_are_refused(tmp_path, capsys):
    duplicated = tmp_path / "dup.yaml"
    duplicated.write_text("training:\n  train_iters: 5\n  seed: 1\n  train_iters: 7\n")
    assert main(["config", "show", str(duplicated)]) == 2
    err = capsys.readouterr().err
    assert f"{duplicated}:4:3" in err and "duplicate key 'train_iters' (first at line 2)" in err
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing but a comment\n")
    assert main(["config", "show", str(empty)]) == 2
    assert f"config file {empty} is empty" in capsys.readouterr().err


@pytest.mark.parametrize("override", ["optimizer.lr=-1", "training.precision=bf16", "model.hidden_size=130",
                                      "optimizer.beta2=1"])
def test_config_show_and_train_refuse_alike(override):
    """Real processes: the message after the command name is the same, and train refuses before any heavy start."""
    def stderr_of(*command):
        result = subprocess.run([sys.executable, "-m", "launcher.cli", *command, "--set", override], cwd=REPO,
                                env=child_env(), capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        return lines[0].split("error: ", 1)[1]

    assert stderr_of("config", "show") == stderr_of("train")

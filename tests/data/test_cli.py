"""The `tokenizer` and `data` commands end to end through `launcher.cli.main`."""

from launcher.cli import main


def test_train_preprocess_inspect(shared_data, tmp_path, capsys):
    alice = str(shared_data / "gutenberg/alice_in_wonderland_pg11.txt")
    model = tmp_path / "alice"
    assert main(["tokenizer", "train", "--input", alice, "--vocab-size", "500", "--model-type", "unigram",
                 "--output", str(model), "--input-sentence-size", "2000"]) == 0
    assert main(["tokenizer", "info", f"{model}.model"]) == 0
    assert "vocab_size=500 eod_id=2 pad_id=3" in capsys.readouterr().out
    prefix = tmp_path / "alice-data"
    assert main(["data", "preprocess", "--input", alice, "--tokenizer", f"{model}.model", "--output-prefix",
                 str(prefix), "--workers", "2", "--doc-boundary", "blank-line"]) == 0
    assert main(["data", "inspect", str(prefix), "--tokenizer", f"{model}.model"]) == 0
    out = capsys.readouterr().out
    assert "documents" in out and "dtype uint16" in out and "Project Gutenberg" in out


def test_bad_input_is_one_line_without_traceback(tmp_path, capsys):
    missing = tmp_path / "missing.txt"
    assert main(["tokenizer", "train", "--input", str(missing), "--vocab-size", "300", "--output", "x"]) == 2
    err = capsys.readouterr().err
    assert err == f"sa-megatron tokenizer: error: {missing}: no such file; expected a text or JSONL corpus file\n"
    assert main(["data", "inspect", str(tmp_path / "nothing")]) == 2
    assert "nothing.idx: no such file" in capsys.readouterr().err

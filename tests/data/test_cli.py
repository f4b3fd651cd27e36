"""The `tokenizer` and `data` commands end to end through `launcher.cli.main`."""

import io
import json
import sys
from pathlib import Path

import pytest

from launcher.cli import main


def test_train_preprocess_inspect(shared_data, bpe_model, tmp_path, capsys):
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
    # The sidecar names the tokenizer: inspecting with another one (same vocab size or not) is refused.
    assert main(["data", "inspect", str(prefix), "--tokenizer", str(bpe_model)]) == 2
    assert "tokenized with a different tokenizer" in capsys.readouterr().err


def test_bad_input_is_one_line_without_traceback(tmp_path, capsys):
    missing = tmp_path / "missing.txt"
    assert main(["tokenizer", "train", "--input", str(missing), "--vocab-size", "300", "--output", "x"]) == 2
    err = capsys.readouterr().err
    assert err == f"sa-megatron tokenizer: error: {missing}: no such file; expected a text or JSONL corpus file\n"
    assert main(["data", "inspect", str(tmp_path / "nothing")]) == 2
    assert "nothing.idx: no such file" in capsys.readouterr().err


def test_corpus_error_in_tokenizer_training_is_one_line(tmp_path, capsys):
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text('{"text": "hello world"}\n{"body": "no text"}\n')
    assert main(["tokenizer", "train", "--input", str(jsonl), "--vocab-size", "300", "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (f"sa-megatron tokenizer: error: {jsonl}: the JSON line at byte offset 24 has no "
                                       "string field 'text' (see --json-key)\n")
    for option, value in (("--vocab-size", "0"), ("--input-sentence-size", "-1")):
        args = ["tokenizer", "train", "--input", str(jsonl), "--vocab-size", "300", "--output", str(tmp_path / "o")]
        assert main(args + [option, value]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sa-megatron tokenizer: error: ") and len(err.splitlines()) == 1 and value in err


def test_inspect_ids_outside_the_tokenizer(make_dataset, bpe_model, capsys):
    prefix = make_dataset([[1, 2, 5000]])  # no sidecar: from another tool, with ids the 1000-piece model lacks
    assert main(["data", "inspect", prefix, "--tokenizer", str(bpe_model)]) == 2
    assert capsys.readouterr().err.endswith(
        f"error: {prefix}.bin: the data was tokenized with a vocabulary of 5001 ids, larger than the tokenizer's "
        "1000; preprocess it again with the run's tokenizer\n")


def test_inspect_hints_at_the_prefix(make_dataset, capsys):
    prefix = make_dataset([[1, 2]])
    for path in (f"{prefix}.idx", f"{prefix}.bin"):
        assert main(["data", "inspect", path]) == 2
        assert capsys.readouterr().err.endswith(f"no such file; give the dataset prefix without .bin/.idx: {prefix}\n")


def test_preprocess_output_under_a_file(bpe_model, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text\n")
    for output in (corpus / "x", corpus / "sub" / "x"):
        assert main(["data", "preprocess", "--input", str(corpus), "--tokenizer", str(bpe_model),
                     "--output-prefix", str(output)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"sa-megatron data: error: {output}.bin: cannot write there (")
        assert err.endswith("); expected a path in a writable folder\n") and str(corpus) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


def test_outputs_that_are_folders_are_refused_before_the_work(shared_data, bpe_model, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text((shared_data / "gutenberg/alice_in_wonderland_pg11.txt").read_text(encoding="utf-8"))
    (tmp_path / "tok.model").mkdir()
    assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "500",
                 "--input-sentence-size", "2000", "--output", str(tmp_path / "tok")]) == 2
    assert capsys.readouterr().err == (f"sa-megatron tokenizer: error: {tmp_path / 'tok.model'}: is a folder; "
                                       "expected a file path to write (a new file or one to replace)\n")
    (tmp_path / "data.bin").mkdir()
    assert main(["data", "preprocess", "--input", str(corpus), "--tokenizer", str(bpe_model),
                 "--output-prefix", str(tmp_path / "data")]) == 2
    assert capsys.readouterr().err.startswith(f"sa-megatron data: error: {tmp_path / 'data.bin'}: is a folder; ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "data.bin", "tok.model"]  # no temps left


def test_inspect_ids_outside_the_tokenizer_despite_its_sidecar(make_dataset, bpe_model, capsys):
    from sa_megatron.data.tokenizer import load_tokenizer

    prefix = make_dataset([[1, 2, 5000]])  # a sidecar claiming this tokenizer, over a .bin it did not write
    tokenizer = load_tokenizer(bpe_model)
    Path(f"{prefix}.json").write_text(json.dumps({"vocab_size": 1000, "tokenizer_sha256": tokenizer.sha256}))
    assert main(["data", "inspect", prefix, "--tokenizer", str(bpe_model)]) == 2
    assert capsys.readouterr().err.endswith(
        f"error: {prefix}.bin: document 0 holds token id 5000, outside the tokenizer's 1000 ids; "
        "preprocess it again with the run's tokenizer\n")


@pytest.mark.parametrize("workers", ["0", "-3", "two"])
def test_preprocess_needs_at_least_one_worker(bpe_model, tmp_path, capsys, workers):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "preprocess", "--input", "x.txt", "--tokenizer", str(bpe_model),
              "--output-prefix", str(tmp_path / "d"), "--workers", workers])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith(f"argument --workers: expected a positive integer, got '{workers}'\n")


def test_preprocess_with_a_held_out_split(shared_data, bpe_model, tmp_path, capsys):
    """The README's flow: preprocess with --split, then the valid dataset is a dataset like any other."""
    books = [str(shared_data / "gutenberg" / name)
             for name in ("alice_in_wonderland_pg11.txt", "frankenstein_pg84.txt")]
    prefix = tmp_path / "data" / "corpus"
    assert main(["data", "preprocess", "--input", *books, "--tokenizer", str(bpe_model), "--output-prefix",
                 str(prefix), "--doc-boundary", "blank-line", "--split", "98,1,1", "--split-by", "documents"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [f"wrote {prefix}_{name}.bin/.idx"
                                                      for name in ("train", "valid", "test")]
    assert main(["data", "inspect", f"{prefix}_valid", "--tokenizer", str(bpe_model)]) == 0
    assert "\nsplit: valid of --split 98,1,1 --split-by documents --split-seed 1234\n" in capsys.readouterr().out
    assert main(["data", "preprocess", "--input", *books, "--tokenizer", str(bpe_model), "--output-prefix",
                 str(tmp_path / "files"), "--split", "2,1,0", "--split-by", "files", "--split-seed", "5"]) == 0
    assert json.loads((tmp_path / "files_train.json").read_text())["split"] == {
        "name": "train", "shares": [2, 1, 0], "by": "files", "seed": 5}


@pytest.mark.parametrize("flags, message", [
    (["--split", "98,1,1"], "--split needs --split-by documents (each split draws documents from every file) or "
                            "--split-by files (whole files go to one split)"),
    (["--split-by", "files"], "--split-by and --split-seed need --split TRAIN,VALID,TEST (e.g. --split 98,1,1)"),
    (["--split-seed", "3"], "--split-by and --split-seed need --split TRAIN,VALID,TEST (e.g. --split 98,1,1)"),
])
def test_split_flags_come_together(bpe_model, tmp_path, capsys, flags, message):
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text\n")
    assert main(["data", "preprocess", "--input", str(corpus), "--tokenizer", str(bpe_model),
                 "--output-prefix", str(tmp_path / "d"), *flags]) == 2
    err = capsys.readouterr().err
    assert err == f"sa-megatron data: error: {message}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


@pytest.mark.parametrize("split", ["98,1", "a,b,c", "1,-1,0", "0,0,0", "nan,1,1"])
def test_split_shares_are_checked_before_the_work(bpe_model, tmp_path, capsys, split):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "preprocess", "--input", "x.txt", "--tokenizer", str(bpe_model),
              "--output-prefix", str(tmp_path / "d"), "--split", split, "--split-by", "documents"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith("argument --split: expected three finite, non-negative train,valid,test "
                                            f"shares, not all zero, like 98,1,1; got '{split}'\n")


class TerminalStream(io.StringIO):
    """Stands in for stderr on a terminal, where progress bars are drawn."""

    def isatty(self):
        return True


def test_tokenizer_train_draws_a_reading_bar_on_a_terminal_only(shared_data, tmp_path, capsys, monkeypatch):
    alice = str(shared_data / "gutenberg/alice_in_wonderland_pg11.txt")
    train = ["tokenizer", "train", "--input", alice, "--vocab-size", "500", "--input-sentence-size", "2000"]
    assert main([*train, "--output", str(tmp_path / "piped")]) == 0
    assert "read corpus" not in capsys.readouterr().err
    terminal = TerminalStream()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main([*train, "--output", str(tmp_path / "shown")]) == 0
    assert "read corpus: 100%" in terminal.getvalue()
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'shown'}.model")

"""Length-extrapolation perplexity and text generation on a tiny, freshly built model."""

import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from launcher.cli import main
from sa_megatron.config.schema import ModelConfig
from sa_megatron.errors import UserInputError
from sa_megatron.eval.context import generation_context
from sa_megatron.eval.generate import ContextFit, filter_logits, fit_to_context, generate_tokens
from sa_megatron.eval.perplexity import perplexity_at_length, perplexity_at_lengths, window_count
from sa_megatron.model import build_model
from tests.training.launch import child_env
from tests.training.tiny_run import make_corpus, tiny_config_dict

VOCAB, PADDED_VOCAB = 100, 128


def tiny_model(position_encoding="rope", seq_length=16):
    torch.manual_seed(0)
    config = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=2, seq_length=seq_length,
                         vocab_size=VOCAB, position_encoding=position_encoding, attention="sa")
    return build_model(config, PADDED_VOCAB).eval(), config


def random_stream(num_tokens, seed=1):
    return torch.randint(0, VOCAB, (num_tokens,), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def rope_model():
    return tiny_model()


def direct_nll(model, stream, length, score_last, windows):
    """Mean NLL computed window by window with plain cross-entropy: the reference for the batched code."""
    losses = []
    with torch.no_grad():
        for w in range(windows):
            chunk = stream[w * length: w * length + length + 1]
            logits = model(chunk[None, :-1])[0].float()
            losses.append(F.cross_entropy(logits[-score_last:], chunk[-score_last:], reduction="none"))
    return torch.cat(losses).double().mean().item()


@pytest.mark.parametrize("length,score_last,batch_size", [(16, None, 1), (32, 8, 3), (48, 48, 2)])
def test_perplexity_matches_direct_computation(rope_model, length, score_last, batch_size):
    model, _ = rope_model
    stream = random_stream(200)
    result = perplexity_at_length(model, stream, length, score_last=score_last, batch_size=batch_size)
    scored_per_window = score_last or length
    windows = (200 - 1) // length
    assert (result.windows, result.scored_tokens) == (windows, windows * scored_per_window)
    expected = direct_nll(model, stream, length, scored_per_window, windows)
    assert result.mean_nll == pytest.approx(expected, rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(expected), rel=1e-5)


def test_window_bookkeeping_and_documents(rope_model):
    model, config = rope_model
    assert window_count(65, 16) == 4 and window_count(64, 16) == 3 and window_count(1, 16) == 0
    assert window_count(1000, 16, max_windows=5) == 5
    docs = [random_stream(30, seed=s).numpy() for s in range(4)]  # 120 tokens: 7 windows of 16, 3 of 32
    results = perplexity_at_lengths(model, config, docs, [16, 32], score_last=4, max_windows=5)
    assert [(r.length, r.windows, r.scored_tokens) for r in results] == [(16, 5, 20), (32, 3, 12)]
    with pytest.raises(UserInputError, match="score-last"):
        perplexity_at_lengths(model, config, docs, [16], score_last=17)
    with pytest.raises(UserInputError, match="too few"):
        perplexity_at_lengths(model, config, docs, [128])


def test_longer_than_training_length_for_extrapolating_encodings():
    for encoding in ("alibi", "kerple", "none"):
        model, config = tiny_model(encoding)
        (result,) = perplexity_at_lengths(model, config, random_stream(100), [64])  # trained length 16
        assert result.windows == 1 and math.isfinite(result.mean_nll)


def test_learned_positions_refuse_longer_windows():
    model, config = tiny_model("learned")
    (result,) = perplexity_at_lengths(model, config, random_stream(40), [16])
    assert result.windows == 2
    with pytest.raises(UserInputError, match="learned position table of 16 rows"):
        perplexity_at_lengths(model, config, random_stream(100), [16, 32])


def greedy_by_hand(model, prompt, steps):
    """Greedy decoding by running the whole sequence through the training forward at every step (no cache)."""
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            tokens.append(int(model(torch.tensor([tokens]))[0, -1, :VOCAB].argmax()))
    return tokens[len(prompt):]


def test_greedy_is_argmax_stepping_and_deterministic(rope_model):
    model, _ = rope_model
    prompt = [5, 17, 42]
    kwargs = dict(max_new_tokens=12, vocab_size=VOCAB, temperature=0.0)
    greedy = generate_tokens(model, prompt, seed=0, **kwargs)
    assert greedy == greedy_by_hand(model, prompt, 12)
    assert generate_tokens(model, prompt, seed=123, **kwargs) == greedy
    top1 = generate_tokens(model, prompt, max_new_tokens=12, vocab_size=VOCAB, temperature=1.3, top_k=1, seed=7)
    assert top1 == greedy


def test_sampling_is_seeded_and_never_picks_padded_rows(rope_model):
    model, _ = rope_model
    kwargs = dict(max_new_tokens=30, vocab_size=VOCAB, temperature=5.0, seed=3)
    first = generate_tokens(model, [1, 2], **kwargs)
    assert first == generate_tokens(model, [1, 2], **kwargs)
    assert len(first) == 30 and max(first) < VOCAB


def test_stops_at_eod(rope_model):
    model, _ = rope_model
    greedy = generate_tokens(model, [9], max_new_tokens=10, vocab_size=VOCAB, temperature=0.0)
    eod = greedy[3]
    stop = greedy.index(eod)
    stopped = generate_tokens(model, [9], max_new_tokens=10, vocab_size=VOCAB, temperature=0.0, eod_id=eod)
    assert stopped == greedy[:stop]


def test_learned_positions_generate_up_to_their_table():
    model, config = tiny_model("learned", seq_length=8)
    tokens = generate_tokens(model, [3, 4, 5], max_new_tokens=5, vocab_size=VOCAB, temperature=0.0)
    assert tokens == greedy_by_hand(model, [3, 4, 5], 5)  # 8 tokens: the whole table
    with pytest.raises(ValueError, match="sequence of 9 tokens exceeds the learned position table"):
        generate_tokens(model, [3, 4, 5], max_new_tokens=7, vocab_size=VOCAB, temperature=0.0)


def test_fit_to_context():
    fit = fit_to_context([1, 2, 3], 10**12, 128)
    assert (fit.prompt_ids, fit.max_new_tokens) == ([1, 2, 3], 125)
    assert fit.notes == ["generating at most 125 of the 1000000000000 new tokens asked for: the model's usable "
                         "context is 128 tokens and the prompt takes 3 (see --max-context)"]
    long_prompt = list(range(1000))
    fit = fit_to_context(long_prompt, 100, 512)  # the prompt gives way to the new tokens
    assert (fit.prompt_ids, fit.max_new_tokens) == (long_prompt[-412:], 100)
    assert fit.notes == ["the prompt of 1000 tokens keeps its last 412: the model's usable context is 512 tokens "
                         "(see --max-context)"]
    fit = fit_to_context(long_prompt, 10**12, 512)  # ... but keeps at least half the context
    assert (fit.prompt_ids, fit.max_new_tokens, len(fit.notes)) == (long_prompt[-256:], 256, 2)
    assert fit_to_context([1, 2], 5, 8) == ContextFit([1, 2], 5, [])


def test_generation_context():
    assert generation_context(tiny_model("rope")[1]) == 4 * 16
    assert generation_context(tiny_model("alibi")[1], 1000) == 1000
    learned = tiny_model("learned")[1]
    assert generation_context(learned) == generation_context(learned, 16) == 16
    with pytest.raises(UserInputError, match="--max-context 17 exceeds the learned position table of 16 rows"):
        generation_context(learned, 17)
    with pytest.raises(UserInputError, match="--max-context 1 leaves no room"):
        generation_context(learned, 1)


def test_top_p_keeps_the_minimal_nucleus():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    kept = lambda p: torch.isfinite(filter_logits(logits, top_p=p)).nonzero().flatten().tolist()  # noqa: E731
    # The smallest set of most likely tokens whose mass reaches p (p kept off the exact sums 0.5, 0.8, 0.95).
    assert kept(0.1) == kept(0.49) == [0]
    assert kept(0.51) == kept(0.79) == [0, 1]
    assert kept(0.81) == [0, 1, 2]
    assert kept(0.96) == kept(1.0) == [0, 1, 2, 3]


def test_top_k_then_top_p():
    logits = torch.tensor([0.05, 0.5, 0.15, 0.3]).log()
    top2 = filter_logits(logits, top_k=2)
    assert torch.isfinite(top2).tolist() == [False, True, False, True]
    # After top-k the nucleus is computed over the survivors: 0.5/0.8 = 0.625 < 0.7, so both stay.
    assert torch.isfinite(filter_logits(logits, top_k=2, top_p=0.7)).tolist() == [False, True, False, True]
    assert torch.isfinite(filter_logits(logits, top_k=2, top_p=0.6)).tolist() == [False, True, False, False]


def test_bad_sampling_options_are_user_errors(rope_model):
    model, _ = rope_model
    with pytest.raises(UserInputError, match="top_p"):
        generate_tokens(model, [1], max_new_tokens=1, vocab_size=VOCAB, top_p=0.0)
    for temperature in (float("nan"), float("inf"), 1e-45, -1.0):
        with pytest.raises(UserInputError, match="temperature 0 .greedy. or in"):
            generate_tokens(model, [1], max_new_tokens=1, vocab_size=VOCAB, temperature=temperature)


# --- the CLI end to end: a real 4-step training run (DeepSpeed, own process), then eval and generate -----------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """(checkpoint dir, dataset prefix) of a tiny run trained by `sa-megatron train` in a subprocess, so the
    process group it creates does not leak into this test process. It runs in its own folder with the paths relative
    to it, as the README's commands are written (its output goes to train.log there); the tests run elsewhere."""
    work = tmp_path_factory.mktemp("run")
    tokenizer, prefix = make_corpus(work)
    config = tiny_config_dict(tokenizer.name, Path(prefix).name, checkpoint={"save_dir": "tiny-sa", "save_interval": 0})
    (work / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "launcher.cli", "train", "run.yaml"], cwd=work, env=child_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    (work / "train.log").write_text(done.stdout)
    return str(work / "tiny-sa"), prefix


def test_training_logs_to_tensorboard_under_its_save_dir_as_a_run_named_after_it(trained_run):
    save_dir, _ = trained_run
    events = EventAccumulator(str(Path(save_dir) / "tensorboard" / "tiny-sa"))
    events.Reload()
    assert {"train/loss", "train/lr", "train/tokens_per_sec"} <= set(events.Tags()["scalars"])
    log = (Path(save_dir).parent / "train.log").read_text()
    assert "TensorBoard: run tiny-sa logs to tiny-sa/tensorboard/tiny-sa; view it with tensorboard --logdir " \
           "tiny-sa/tensorboard" in log


def test_cli_eval_writes_json_tensorboard_and_table(trained_run, tmp_path, capsys):
    save_dir, prefix = trained_run
    output, tensorboard = tmp_path / "results.json", tmp_path / "tb"
    assert main(["eval", "--load", save_dir, "--data", prefix, "--lengths", "16,32,64", "--score-last", "8",
                 "--max-windows", "3", "--batch-size", "2", "--output", str(output),
                 "--tensorboard-dir", str(tensorboard)]) == 0

    results = json.loads(output.read_text())["results"]
    assert [(r["length"], r["windows"], r["scored_tokens"]) for r in results] == [(16, 3, 24), (32, 3, 24), (64, 3, 24)]
    assert all(1 < r["ppl"] < 1e4 and r["ppl"] == pytest.approx(math.exp(r["mean_nll"])) for r in results)
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["length", "windows", "tokens", "nll", "ppl"] and len(table) == 4

    events = EventAccumulator(str(tensorboard / "tiny-sa"))  # the run's name in TensorBoard, as in training
    events.Reload()
    for r in results:
        (event,) = events.Scalars(f"valid_length/ppl_at_{r['length']}")
        assert event.value == pytest.approx(r["ppl"], rel=1e-6)
    curve = {e.step: e.value for e in events.Scalars("valid_length/ppl")}
    assert curve == {r["length"]: pytest.approx(r["ppl"], rel=1e-6) for r in results}


def test_cli_eval_reports_bad_arguments_in_one_line(trained_run, tmp_path, capsys):
    save_dir, prefix = trained_run
    assert main(["eval", "--load", save_dir, "--data", prefix, "--lengths", "16", "--score-last", "20"]) == 2
    assert "(--score-last) must be in [1, 16]" in capsys.readouterr().err
    for bad in (["--lengths", "16,abc"], ["--lengths", "16", "--batch-size", "0"],
                ["--lengths", "16", "--max-windows", "-2"]):
        with pytest.raises(SystemExit):
            main(["eval", "--load", save_dir, "--data", prefix, *bad])
        assert "positive integer" in capsys.readouterr().err
    # Options are checked for every length before the first one is evaluated.
    assert main(["eval", "--load", save_dir, "--data", prefix, "--lengths", "32,16", "--score-last", "20"]) == 2
    assert capsys.readouterr().out == ""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["eval", "--load", save_dir, "--data", prefix, "--lengths", "16",
                 "--output", str(blocker / "x.json")]) == 2
    captured = capsys.readouterr()
    assert "x.json: cannot write there" in captured.err and captured.out == ""  # refused before evaluating


def test_cli_eval_refuses_data_of_another_tokenizer(trained_run, other_tokenizer, tmp_path, capsys):
    from sa_megatron.data.preprocess import preprocess
    from tests.training.tiny_run import corpus_text

    save_dir, _ = trained_run
    text = tmp_path / "corpus.txt"
    text.write_text(corpus_text(), encoding="utf-8")
    preprocess([text], other_tokenizer, tmp_path / "other-data", doc_boundary="blank-line", show_progress=False)
    assert main(["eval", "--load", save_dir, "--data", str(tmp_path / "other-data"), "--lengths", "16"]) == 2
    assert "different tokenizer" in capsys.readouterr().err


def test_cli_generate_is_deterministic_when_greedy(trained_run, capsys):
    save_dir, _ = trained_run
    args = ["generate", "--load", save_dir, "--prompt", "First Citizen:", "--max-new-tokens", "8"]
    outputs = []
    for seed in ("0", "1"):
        assert main(args + ["--temperature", "0", "--seed", seed]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].startswith("First Citizen:")
    assert main(args + ["--temperature", "0.9", "--top-k", "20", "--top-p", "0.9", "--seed", "3"]) == 0
    assert capsys.readouterr().out.startswith("First Citizen:")


def test_generate_runs_from_another_directory_with_the_tokenizer_kept_in_the_save_dir(trained_run, other_tokenizer,
                                                                                        tmp_path, monkeypatch, capsys):
    save_dir, _ = trained_run  # trained with tokenizer.model=tok.model, relative to the folder it ran in
    trained_with = Path(save_dir).parent / "tok.model"
    assert (Path(save_dir) / "tokenizer.model").read_bytes() == trained_with.read_bytes()
    monkeypatch.chdir(tmp_path)
    args = ["generate", "--load", save_dir, "--prompt", "First Citizen:", "--max-new-tokens", "6", "--temperature", "0"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.startswith("First Citizen:") and len(text) > len("First Citizen:\n")

    # --tokenizer overrides the copy; one that is not the tokenizer trained with is refused in one line.
    assert main(args + ["--tokenizer", str(trained_with)]) == 0 and capsys.readouterr().out == text
    assert main(args + ["--tokenizer", str(other_tokenizer)]) == 2
    (error,) = capsys.readouterr().err.splitlines()
    assert error.startswith(f"sa-megatron generate: error: tokenizer {other_tokenizer} is not the one checkpoint "
                            f"{save_dir}/step_4 was trained with (sha256 ")


def test_generate_finds_the_recorded_tokenizer_of_a_checkpoint_without_a_copy(trained_run, tmp_path, monkeypatch,
                                                                              capsys):
    """Checkpoints from before the copy: their relative tokenizer path is resolved from the directory training ran
    in (what precedes the relative save_dir in the checkpoint's real path), from any directory; else the error names
    the places looked at and --tokenizer."""
    save_dir, _ = trained_run
    project = tmp_path / "moved-project"
    old = Path(shutil.copytree(save_dir, project / "tiny-sa"))
    (old / "tokenizer.model").unlink()
    tokenizer = Path(shutil.copyfile(Path(save_dir).parent / "tok.model", project / "tok.model"))
    monkeypatch.chdir(tmp_path)
    args = ["generate", "--load", str(old), "--prompt", "First Citizen:", "--max-new-tokens", "6", "--temperature", "0"]
    assert main(args) == 0 and capsys.readouterr().out.startswith("First Citizen:")

    tokenizer.rename(tmp_path / "elsewhere.model")
    assert main(args) == 2
    (error,) = capsys.readouterr().err.splitlines()
    assert error == (f"sa-megatron generate: error: {old} holds no tokenizer.model (older runs kept no copy) and its "
                     f"recorded tokenizer.model tok.model is not at {project / 'tok.model'} or {tmp_path / 'tok.model'}; "
                     "pass --tokenizer MODEL")
    assert main(args + ["--tokenizer", "elsewhere.model"]) == 0 and capsys.readouterr().out.startswith("First Citizen:")


def test_cli_eval_refuses_output_paths_before_evaluating(trained_run, tmp_path, capsys):
    save_dir, prefix = trained_run
    args = ["eval", "--load", save_dir, "--data", prefix, "--lengths", "16"]
    a_file, a_folder = tmp_path / "a-file", tmp_path / "a-folder"
    a_file.write_text("")
    a_folder.mkdir()
    for bad, message in ((["--output", str(a_folder)], f"{a_folder}: is a folder; expected a file path to write"),
                         (["--tensorboard-dir", str(a_file)], f"{a_file}: is a file; expected a folder to write into"),
                         (["--tensorboard-dir", str(a_file / "tb")], f"{a_file / 'tb'}: cannot write there (")):
        assert main(args + bad) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith(f"sa-megatron eval: error: {message}") and len(captured.err.splitlines()) == 1
        assert captured.out == ""  # refused before evaluating


def test_cli_generate_refuses_huge_seeds_and_prompts_that_are_not_utf8(trained_run, capsys):
    save_dir, _ = trained_run
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--load", save_dir, "--seed", str(2**70)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith(f"argument --seed: expected an integer seed in [0, 2**64), got '{2**70}'\n")
    # Bytes that are not UTF-8 reach Python's argv as lone surrogates; a real process, so they pass through exec.
    prompt = os.fsdecode(b"caf\xe9 au lait")
    done = subprocess.run([sys.executable, "-m", "launcher.cli", "generate", "--load", save_dir, "--prompt", prompt],
                          env=child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == ("sa-megatron generate: error: argument --prompt: expected UTF-8 text; "
                                            "byte 0xe9 at character 3 is not valid UTF-8")


def test_cli_generate_is_capped_at_the_usable_context(trained_run, capsys):
    save_dir, _ = trained_run  # rope, trained on 32 tokens: 4 x 32 = 128 tokens of context by default
    args = ["generate", "--load", save_dir, "--temperature", "0"]
    assert main(args + ["--prompt", "First Citizen:", "--max-new-tokens", str(10**12)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("First Citizen:")
    (note,) = captured.err.splitlines()
    counts = re.fullmatch(rf"note: generating at most (\d+) of the {10**12} new tokens asked for: the model's usable "
                          r"context is 128 tokens and the prompt takes (\d+) \(see --max-context\)", note)
    assert counts and int(counts[1]) + int(counts[2]) == 128
    prompt = "First Citizen: we are accounted poor citizens.\n" * 4400  # 211 KB
    assert main(args + ["--prompt", prompt, "--max-new-tokens", "20", "--max-context", "64"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(prompt) and len(captured.out) > len(prompt)
    (note,) = captured.err.splitlines()
    assert note.startswith("note: the prompt of ") and note.endswith(
        " tokens keeps its last 44: the model's usable context is 64 tokens (see --max-context)")


class TerminalStream(io.StringIO):
    """Stands in for stderr on a terminal, where progress bars are drawn."""

    def isatty(self):
        return True


def test_eval_progress_bars_count_windows_on_stderr_only(rope_model, capsys):
    model, config = rope_model
    perplexity_at_lengths(model, config, random_stream(120), [16, 32], max_windows=5, show_progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "eval length 16: 100%" in captured.err and "5/5" in captured.err
    assert "eval length 32: 100%" in captured.err and "3/3" in captured.err


@pytest.mark.parametrize("rank,bar_shown", [("0", True), ("1", False)])
def test_cli_eval_draws_bars_on_a_terminal_from_rank_0_only(trained_run, capsys, monkeypatch, rank, bar_shown):
    save_dir, prefix = trained_run
    terminal = TerminalStream()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("RANK", rank)
    assert main(["eval", "--load", save_dir, "--data", prefix, "--lengths", "16", "--max-windows", "3"]) == 0
    assert ("eval length 16: 100%" in terminal.getvalue()) == bar_shown
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["length", "windows", "tokens", "nll", "ppl"] and len(table) == 2

"""The typed config: merging, overrides, type checks and every validation rule."""

from pathlib import Path

import pytest
import yaml

from launcher.cli import main
from sa_megatron.config import load_config, padded_vocab_size, to_dict, validate
from sa_megatron.config.validate import parse_split
from sa_megatron.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_files_merge_left_to_right_then_overrides(tmp_path):
    base = write(tmp_path, "a.yaml", {"model": {"num_layers": 6, "hidden_size": 256}, "training": {"seed": 1}})
    top = write(tmp_path, "b.yaml", {"model": {"num_layers": 8}})
    config = load_config([base, top], ["training.seed=7", "optimizer.lr=1e-4"])
    assert config.model.num_layers == 8  # b.yaml wins over a.yaml
    assert config.model.hidden_size == 256  # untouched keys of a.yaml survive the merge
    assert config.training.seed == 7
    assert config.optimizer.lr == pytest.approx(1e-4)  # YAML reads 1e-4 as a string; floats accept it


@pytest.mark.parametrize("path", sorted(set(CONFIGS.rglob("*.yaml")) - set(CONFIGS.glob("layouts/*.yaml"))
                                       - set(CONFIGS.glob("studies/*.yaml"))), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    validate(load_config([path]), world_size=1)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("studies/*.yaml")), ids=lambda p: p.name)
def test_shipped_studies_are_valid(path, tmp_path):
    from sa_megatron.study.spec import load_study

    # Every run's config is built and validated when the study loads.
    assert load_study(path, study_dir=str(tmp_path)).runs


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("layouts/2.7B-*x*.yaml")), ids=lambda p: p.name)
def test_layout_configs_are_valid_on_their_clusters(path):
    nodes, gpus = (int(n) for n in path.stem.split("-")[1].split("x"))  # 2.7B-<nodes>x<gpus per node>
    validate(load_config([CONFIGS / "models" / "2.7B.yaml", path]), world_size=nodes * gpus)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.hiden_size=64", "did you mean 'hidden_size'"),
        ("modle.num_layers=2", "did you mean 'model'"),
        ("model.norm=batchnorm", "model.norm must be one of 'layernorm', 'rmsnorm'"),
        ("training.train_iters=ten", "training.train_iters must be of type int"),
        ("model.tie_embeddings=3", "model.tie_embeddings must be of type bool"),
        ("training.micro_batch_size=true", "must be of type int"),
        ("model.hidden_size=130", "hidden_size (130) must be divisible by model.num_attention_heads (4)"),
        ("parallel.tensor_parallel=3", "num_attention_heads (4) must be divisible by parallel.tensor_parallel (3)"),
        ("parallel.pipeline_parallel=3", "num_layers (2) must be divisible by parallel.pipeline_parallel (3)"),
        ("data.split=90,10", "data.split must be three finite, non-negative numbers"),
        ("data.split=90/10/0", "data.split must be three finite, non-negative numbers"),
        ("data.split=nan,1,1", "data.split must be three finite, non-negative numbers"),
        ("data.split=inf,1,0", "data.split must be three finite, non-negative numbers"),
        ("data.split=0,0,0", "not all zero"),
        ("data.weights=[nan]", "data.weights must be finite, non-negative numbers, not all zero, got [nan]"),
        ("data.weights=[.inf]", "data.weights must be finite, non-negative numbers"),
        ("data.weights=[0, 0]", "data.weights must be finite, non-negative numbers"),
        ("optimizer.lr=nan", "optimizer.lr is nan, outside its valid range (0, 10000]"),
        ("training.seed=-1", "training.seed is -1, outside its valid range [0, 2**32)"),
        ("training.seed=4294967296", "training.seed is 4294967296, outside its valid range [0, 2**32)"),
        ("logging.log_interval=0", "logging.log_interval is 0, outside its valid range [1, 1e+12]"),
        ("training.eval_interval=-1", "training.eval_interval is -1, outside its valid range [0, 1e+12]"),
        ("training.eval_iters=0", "training.eval_iters must be positive when training.eval_interval > 0, got 0"),
        ("checkpoint.save_interval=-5", "checkpoint.save_interval is -5, outside its valid range"),
        ("schedule.warmup_iters=-1", "schedule.warmup_iters is -1, outside its valid range"),
        ("schedule.decay_iters=0", "schedule.decay_iters is 0, outside its valid range [1, 1e+12]"),
        ("model.ffn_hidden_size=0", "model.ffn_hidden_size is 0, outside its valid range [1, 2**24]"),
        ("model.max_position_embeddings=-2", "model.max_position_embeddings is -2, outside its valid range"),
        ("tokenizer.vocab_size=0", "tokenizer.vocab_size is 0, outside its valid range"),
        ("parallel.zero_stage=4", "parallel.zero_stage is 4, outside its valid range [0, 3]"),
        ("model.num_layers=0", "model.num_layers is 0, outside its valid range [1, 10000]"),
        ("noequals", "must look like section.key=value"),
        ("optimizer.lr=-1", "optimizer.lr is -1.0, outside its valid range (0, 10000]"),  # not "min_lr exceeds lr"
        ("optimizer.beta1=1.5", "optimizer.beta1 is 1.5, outside its valid range [0, 1)"),
        ("optimizer.weight_decay=-1", "optimizer.weight_decay is -1.0, outside its valid range"),
        ("optimizer.adam_eps=-1", "optimizer.adam_eps is -1.0, outside its valid range"),
        ("optimizer.clip_grad=-1", "optimizer.clip_grad is -1.0, outside its valid range"),
        ("model.norm_eps=-1", "model.norm_eps is -1.0, outside its valid range"),
        ("model.rope_base=0", "model.rope_base is 0.0, outside its valid range (1, 1e+12]"),
        ("model.init_std=-1", "model.init_std is -1.0, outside its valid range"),
        ("model.attention_eps=-1", "model.attention_eps is -1.0, outside its valid range"),
        ("logging.peak_tflops_per_device=-5", "logging.peak_tflops_per_device is -5.0, outside its valid range"),
        ("training.train_iters=1e30", "training.train_iters must be of type int"),
        ("training.train_iters=1000000000000000000000000000000", "training.train_iters is 1000000000000000000000000000000, outside"),
        ("training.initial_loss_scale_power=10000", "training.initial_loss_scale_power is 10000, outside its valid range [0, 40]"),
        ("training.precision=bf16", "training.precision=bf16 needs parallel.zero_stage >= 1"),
        ("checkpoint.keep_last=0", "checkpoint.keep_last is 0, outside its valid range [1, 1000000]"),
    ],
)
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=None) as err:
        load_config([], [override])
    assert message in str(err.value)


@pytest.mark.parametrize("backend", ("chunked", "triton"))
def test_dape_needs_the_eager_score_matrix(backend):
    with pytest.raises(ConfigError, match="dapev2-kerple.*eager.*attention_backend"):
        load_config([], ["model.position_encoding=dapev2-kerple", f"model.attention_backend={backend}"])


def test_dape_cannot_split_heads_over_tensor_parallel():
    with pytest.raises(ConfigError, match="dapev2-kerple.*tensor_parallel=2"):
        load_config([], ["model.position_encoding=dapev2-kerple", "parallel.tensor_parallel=2"])


@pytest.mark.parametrize("attention", ("sa", "sa_raw"))
def test_fp16_refuses_sa_attention(attention):
    with pytest.raises(ConfigError, match=f"precision='fp16' cannot train model.attention='{attention}'.*'bf16'"):
        load_config([], ["training.precision=fp16", f"model.attention={attention}"])
    load_config([], ["training.precision=bf16", "parallel.zero_stage=1", f"model.attention={attention}"])
    load_config([], ["training.precision=fp16", "model.attention=softmax"])


def test_pipeline_with_zero2_is_rejected():
    with pytest.raises(ConfigError, match="DeepSpeed's pipeline engine supports ZeRO stage 0 or 1"):
        load_config([], ["parallel.pipeline_parallel=2", "parallel.zero_stage=2"])


def test_global_batch_must_split_over_micro_batches_and_data_parallel():
    config = load_config([], ["training.micro_batch_size=4", "training.global_batch_size=12"])
    validate(config, world_size=1)
    with pytest.raises(ConfigError, match=r"global_batch_size \(12\) must be divisible by micro_batch_size × data_parallel = 4 × 2"):
        validate(config, world_size=2)
    with pytest.raises(ConfigError, match=r"world size 3 is not tensor_parallel × pipeline_parallel × data_parallel "
                                          r"= 2 × 1 × data_parallel .*launch a multiple of 2 ranks"):
        validate(load_config([], ["parallel.tensor_parallel=2"]), world_size=3)
    with pytest.raises(ConfigError, match=r"sequence_parallel splits model.seq_length \(129\) over tensor_parallel=2"):
        validate(load_config([], ["parallel.tensor_parallel=2", "parallel.sequence_parallel=true",
                                  "model.seq_length=129"]), world_size=2)


def test_blend_weights_must_match_paths():
    with pytest.raises(ConfigError, match="data.weights has 1 entries but data.paths has 2"):
        load_config([], ["data.paths=[a, b]", "data.weights=[1.0]"])


def test_zero_intervals_and_disabled_eval_are_valid():
    config = load_config([], ["training.eval_interval=0", "training.eval_iters=0", "checkpoint.save_interval=0",
                              "schedule.warmup_iters=0", "training.seed=0", f"training.seed={2**32 - 1}"])
    assert config.training.eval_iters == 0 and config.training.seed == 2**32 - 1


def test_split_parser_is_strict():
    assert parse_split("969,30,1") == [969.0, 30.0, 1.0]
    assert parse_split(" 1, 0 ,0") == [1.0, 0.0, 0.0]
    for bad in ("1", "1,0", "1,0,0,0", "1/0/0", "a,b,c", "-1,1,1", "", "1,,1"):
        with pytest.raises(ConfigError, match=f"data.split must be .*; got '{bad}'"):
            parse_split(bad)


def test_vocab_padding_follows_megatron():
    assert padded_vocab_size(50257, 128, 1) == 50304
    assert padded_vocab_size(50257, 128, 2) == 50432
    assert padded_vocab_size(256, 128, 2) == 256


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does-not-exist.yaml does not exist"):
        load_config([tmp_path / "does-not-exist.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  num_layers: 2\n  hidden_size: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_config([bad])
    assert str(err.value) == f"{bad}:4:1: invalid YAML: expected ',' or ']', but got '<stream end>'"
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("model:\n  num_layers: 2\n# réglages\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_config([latin1])
    assert str(err.value) == f"{latin1}:3: not UTF-8 text (byte 0xe9); expected a UTF-8 YAML file"
    listing = write(tmp_path, "list.yaml", [1, 2])
    with pytest.raises(ConfigError, match="must hold a mapping of sections"):
        load_config([listing])


def test_override_value_that_is_not_yaml():
    with pytest.raises(ConfigError) as err:
        load_config([], ["model.seq_length=[1"])
    assert str(err.value) == ("override 'model.seq_length=[1': the value is not valid YAML (expected ',' or ']', "
                              "but got '<stream end>'); quote it to pass a string")


def test_empty_section_means_no_keys(tmp_path):
    base = write(tmp_path, "a.yaml", {"model": {"num_layers": 6}})
    empty = tmp_path / "empty.yaml"
    empty.write_text("model:\ntraining:\n")
    assert load_config([empty]).model.num_layers == 2
    assert load_config([base, empty]).model.num_layers == 6  # an empty section adds nothing, it does not reset


def test_cli_show_prints_the_resolved_config(capsys):
    assert main(["config", "show", str(CONFIGS / "models" / "125M.yaml"), "--set", "training.seed=3"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    expected = to_dict(load_config([CONFIGS / "models" / "125M.yaml"], ["training.seed=3"]))
    assert shown == expected
    assert shown["model"]["num_layers"] == 12 and shown["model"]["hidden_size"] == 768


def test_cli_reports_errors_in_one_line(capsys, tmp_path):
    assert main(["config", "show", "--set", "model.num_layres=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "sa-megatron config: error: unknown key in section 'model' 'num_layres'; did you mean 'num_layers'?"
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {num_layers: 2\n")
    assert main(["config", "show", str(bad)]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_cli_fields_documents_every_field(capsys):
    assert main(["config", "fields"]) == 0
    out = capsys.readouterr().out
    assert "zero_stage: 0  [int]" in out and "DeepSpeed ZeRO stage" in out


def test_batch_error_suggests_values_that_divide():
    config = load_config([], ["training.micro_batch_size=4", "training.global_batch_size=8"])
    with pytest.raises(ConfigError, match=r"4 × 8: e.g. set training.global_batch_size=32 or "
                                          r"training.micro_batch_size=1$"):
        validate(config, world_size=8)


@pytest.mark.parametrize("model, world_size", [("125M", 8), ("350M", 8), ("1.3B", 16), ("2.7B", 32)])
def test_model_configs_fit_the_world_sizes_the_readme_launches(model, world_size):
    validate(load_config([CONFIGS / "models" / f"{model}.yaml"]), world_size=world_size)


def test_config_show_checks_a_world_size(capsys):
    assert main(["config", "show", str(CONFIGS / "models" / "125M.yaml"), "--world-size", "8"]) == 0
    assert "global_batch_size: 256" in capsys.readouterr().out
    assert main(["config", "show", str(CONFIGS / "models" / "125M.yaml"), "--world-size", "3"]) == 2
    assert "must be divisible by micro_batch_size × data_parallel = 4 × 3" in capsys.readouterr().err


def test_config_show_gives_the_vocabulary_of_the_tokenizer_in_use(tmp_path, capsys):
    from sa_megatron.data.corpus import CorpusReader
    from sa_megatron.data.tokenizer import train_tokenizer
    from tests.training.tiny_run import corpus_text

    text = tmp_path / "corpus.txt"
    text.write_text(corpus_text(), encoding="utf-8")
    tokenizer = train_tokenizer(CorpusReader([text], doc_boundary="blank-line"), tmp_path / "spm", vocab_size=400)
    show = ["config", "show", "--set", f"tokenizer.model={tokenizer}", "--set", "parallel.tensor_parallel=2"]
    assert main(show) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["model"]["vocab_size"] == 400  # what train uses, not null
    assert ("  vocab_size: 400  # tokenizer.model has 400 pieces; the embedding pads it to 512 rows (a multiple of "
            "make_vocab_size_divisible_by 128 × tensor_parallel 2)\n") in out
    assert ("  vocab_size: 8000  # not the model's: sizes a tokenizer trained from this config (make demo); "
            "tokenizer.model has 400 pieces\n") in out

    assert main(show + ["--set", "model.vocab_size=300"]) == 2  # refused as train refuses it, in one line
    (error,) = capsys.readouterr().err.splitlines()
    assert "model.vocab_size (300) is smaller than the vocabulary of tokenizer" in error
    assert main(["config", "show", "--set", f"tokenizer.model={tmp_path / 'missing.model'}"]) == 2
    assert "missing.model: no such tokenizer file" in capsys.readouterr().err

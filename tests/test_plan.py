"""`sa-megatron plan`: exact parameter counts, model states against DeepSpeed's estimators, activations against
what a real forward saves for backward, and the command line."""
import json

import pytest
import torch
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs, model_to_params
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

from launcher.cli import main
from sa_megatron.config import load_config, padded_vocab_size
from sa_megatron.config.schema import ModelConfig
from sa_megatron.model import build_model, count_parameters, language_model_loss
from sa_megatron.planning import count_model_parameters
from sa_megatron.planning.activations import ActivationShape, block_bytes, stage_activation_bytes
from sa_megatron.planning.model_states import model_state_bytes

MODEL_2P7B = "configs/models/2.7B.yaml"
GPT2_VOCAB = 50257
TOLERANCE = 0.15  # the bound; the tests below land within 1%
SMALL = dict(num_layers=2, hidden_size=128, num_attention_heads=4, seq_length=128, attention_backend="eager")


def test_2p7b_parameter_count_is_exact():
    config = load_config([MODEL_2P7B]).model
    padded = padded_vocab_size(GPT2_VOCAB, config.make_vocab_size_divisible_by, 1)
    counts = count_model_parameters(config, padded)
    h, layers = config.hidden_size, config.num_layers
    # No biases; LayerNorms have weight and bias; tied embedding/head counted once.
    by_formula = layers * (12 * h * h + 2 * 2 * h) + padded * h + 2 * h
    print(f"2.7B with a {GPT2_VOCAB} (padded {padded}) vocabulary: {counts.total:,} parameters")
    assert counts.total == by_formula
    assert 2.6e9 < counts.total < 2.7e9
    with torch.device("meta"):
        assert counts.total == count_parameters(build_model(config, padded))


@pytest.mark.parametrize("tie", [True, False])
def test_stages_and_tensor_shards_add_up(tie):
    config = ModelConfig(**SMALL, tie_embeddings=tie, position_encoding="kerple", bias=True)
    counts = count_model_parameters(config, 512)
    pp = 2
    stages = [counts.stage_parameters(stage, 1, pp) for stage in range(pp)]
    tied_copy = counts.tied_embedding.per_rank(1)
    assert tied_copy == (512 * 128 if tie else 0)
    assert sum(stages) == counts.total + tied_copy
    # Per TP rank: the split part shrinks by tp, the replicated part (norms, row-parallel biases) stays.
    h = config.hidden_size
    replicated_per_block = 2 * 2 * h + 2 * h  # two LayerNorms, attention-out and MLP-out biases
    assert counts.block.replicated == replicated_per_block
    assert counts.block.per_rank(2) == (counts.block.sharded // 2) + replicated_per_block
    assert counts.block.sharded + counts.block.replicated == sum(
        p.numel() for p in build_model(config, 512).blocks[0].parameters())


def test_model_states_match_deepspeed_estimators():
    config = ModelConfig(**SMALL, bias=True)
    model = build_model(config, 512)
    total, largest_layer = model_to_params(model)
    counts = count_model_parameters(config, 512)
    assert counts.total == total
    assert counts.largest_module(1) == largest_layer
    gpus_per_node, nodes = 8, 2
    dp = gpus_per_node * nodes
    zero2 = model_state_bytes(total, "bf16", 2, dp)
    _, expected2 = estimate_zero2_model_states_mem_needs(total, gpus_per_node, nodes, cpu_offload=False)
    assert zero2.weights + zero2.gradients + zero2.optimizer == pytest.approx(expected2, abs=2)
    zero3 = model_state_bytes(total, "bf16", 3, dp, largest_module=largest_layer)
    _, expected3, _ = estimate_zero3_model_states_mem_needs(total, largest_layer, gpus_per_node, nodes,
                                                            cpu_offload=False, cpu_offload_params=False)
    assert zero3.weights + zero3.gradients + zero3.optimizer == pytest.approx(expected3, abs=2)


def test_fp32_model_states_match_an_adamw_step():
    model = build_model(ModelConfig(**SMALL), 512)
    optimizer = torch.optim.AdamW(model.parameters())
    tokens = torch.randint(0, 512, (2, 129))
    language_model_loss(model(tokens[:, :-1]), tokens[:, 1:]).backward()
    optimizer.step()
    measured = dict(
        weights=sum(p.numel() * p.element_size() for p in model.parameters()),
        gradients=sum(p.grad.numel() * p.grad.element_size() for p in model.parameters()),
        optimizer=sum(v.numel() * v.element_size() for state in optimizer.state.values()
                      for v in state.values() if v.dim() > 0),  # m and v; the step counters are scalars
    )
    predicted = model_state_bytes(count_parameters(model), "fp32", 0, 1)
    assert vars(predicted) == measured


def saved_activation_bytes(config: ModelConfig, vocab: int, micro_batch: int, dtype, checkpointing: bool) -> int:
    """Bytes a real forward + loss keeps for backward, each storage counted once, parameters left out."""
    torch.manual_seed(0)
    model = build_model(config, vocab).to(dtype)
    model.activation_checkpointing = checkpointing
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    tokens = torch.randint(0, vocab, (micro_batch, config.seq_length + 1))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        language_model_loss(model(tokens[:, :-1]), tokens[:, 1:])
    return sum(saved.values())


@pytest.mark.parametrize("options, dtype", [
    (dict(), torch.float32),  # eager SA-Softmax with RoPE: the s×s terms
    (dict(attention_backend="chunked", position_encoding="learned", attention="softmax"), torch.float32),
    (dict(mlp="swiglu", norm="rmsnorm", position_encoding="kerple", attention="sa_raw"), torch.float32),
    (dict(num_layers=3, hidden_size=64, seq_length=256, attention_backend="chunked", hidden_dropout=0.1), torch.float32),
    (dict(), torch.bfloat16),
    (dict(attention_backend="dense", seq_length=256), torch.float32),  # two blocks of query rows
    (dict(attention_backend="dense", attention="softmax", position_encoding="kerple"), torch.float32),
    (dict(attention_backend="dense", attention="sa_raw"), torch.bfloat16),
])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_activations_match_what_a_forward_saves(options, dtype, checkpointing):
    config = ModelConfig(**{**SMALL, **options})
    micro_batch, vocab = 4, 512
    core = config.attention_backend if config.attention_backend in ("eager", "dense") else "chunked"
    shape = ActivationShape(micro_batch, 1, False, 4 if dtype == torch.float32 else 2, core, on_gpu=False)
    predicted = stage_activation_bytes(config, shape, vocab, 0, 1, 1, checkpointing)
    if checkpointing:
        # The recomputed block's activations exist only during backward, where the hooks do not look; that term
        # is `block_bytes`, checked by the uncheckpointed cases.
        predicted -= block_bytes(config, shape)
    measured = saved_activation_bytes(config, vocab, micro_batch, dtype, checkpointing)
    print(f"{options} {dtype} checkpointing={checkpointing}: measured {measured:,} B, predicted {predicted:,} B "
          f"({predicted / measured - 1:+.2%})")
    assert predicted == pytest.approx(measured, rel=TOLERANCE)


def run_plan(capsys, *args):
    code = main(["plan", MODEL_2P7B, "--vocab-size", str(GPT2_VOCAB), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_json_for_two_nodes_has_a_layout_that_fits(capsys):
    code, out, _ = run_plan(capsys, "--nodes", "2", "--gpus-per-node", "8", "--json")
    assert code == 0
    plan = json.loads(out)
    assert plan["parameters"] == count_model_parameters(load_config([MODEL_2P7B]).model, 50304).total
    layout = plan["layouts"][0]
    assert {"tensor_parallel", "pipeline_parallel", "data_parallel", "memory_gib", "fits",
            "bubble_fraction"} <= set(layout)
    assert set(layout["memory_gib"]) >= {"weights", "gradients", "optimizer", "activations", "total"}
    assert all(l["tensor_parallel"] * l["pipeline_parallel"] * l["data_parallel"] == 16 for l in plan["layouts"])
    assert layout["fits"]
    ranks = [(not l["fits"], l["bubble_fraction"]) for l in plan["layouts"]]
    assert ranks == sorted(ranks)


def test_plan_table_marks_what_does_not_fit(capsys):
    code, out, _ = run_plan(capsys, "--gpus-per-node", "8", "--gpu-memory-gib", "10")
    assert code == 0
    rows = [line.split() for line in out.splitlines()[2:] if line[:3].strip().isdigit()]
    assert {row[9] for row in rows} == {"yes", "no"}
    assert [row[9] for row in rows] == sorted(row[9] for row in rows)[::-1]  # "yes" rows first


@pytest.mark.parametrize("args, message", [
    (["--set", "model.num_layer=3"], "num_layer"),
    (["--gpu-memory-gib", "0"], "--gpu-memory-gib"),
    (["--nodes", "1", "--gpus-per-node", "7"], "no valid layout"),
])
def test_bad_input_is_one_line_with_exit_2(capsys, args, message):
    code, out, err = run_plan(capsys, *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err


def test_sequence_parallelism_splits_the_replicated_activations(capsys):
    plans = {}
    for flag in ([], ["--sequence-parallel"]):
        code, out, _ = run_plan(capsys, "--json", "--set", "training.activation_checkpointing=false", *flag)
        assert code == 0
        plans[bool(flag)] = {(l["tensor_parallel"], l["pipeline_parallel"]): l["memory_gib"]["activations"]
                             for l in json.loads(out)["layouts"]}
    assert plans[True][(1, 4)] == plans[False][(1, 4)]  # nothing to split at tp = 1
    assert plans[True][(8, 1)] < plans[False][(8, 1)]


def test_pipeline_bytes_follow_what_deepspeed_sends():
    from sa_megatron.planning.communication import pipeline_bytes

    # Measured by benchmarks/parallel.py: at PP2 each stage sends one direction; a tensor rank sends 1/tp.
    assert pipeline_bytes(1, 4, 1000, 1) == 0
    assert pipeline_bytes(2, 4, 1000, 1) == 4000
    assert pipeline_bytes(2, 4, 1000, 2) == 2000
    assert pipeline_bytes(4, 4, 1000, 1) == 8000  # an inner stage sends forward and backward

"""Tensor parallelism over 2 real gloo processes reproduces the single-rank model: same loss, and each rank's
gradient shard equals the matching slice of the single-rank gradient (DESIGN §7: the classic Megatron bug)."""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sa_megatron.model import build_model, language_model_loss
from sa_megatron.parallel import rng_tracker, set_tensor_parallel_group, tensor_parallel_world_size
from sa_megatron.parallel.rng_tracker import ShardedDropout
from tests.model.tiny import VOCAB, random_tokens, tiny_config

WORLD = 2
# float64 end to end: the only differences left are summation order, far below this.
TOLERANCE = dict(rtol=1e-9, atol=1e-11)
CONFIGS = [
    dict(position_encoding="rope", attention="sa", mlp="swiglu", tie_embeddings=True),
    dict(position_encoding="kerple", attention="softmax", norm="rmsnorm", tie_embeddings=False),
    dict(position_encoding="alibi", attention="sa_raw", bias=False),
    dict(position_encoding="learned", attention="sa"),
]


def run_model(config, tokens):
    torch.manual_seed(0)
    model = build_model(config, VOCAB).double()
    loss = language_model_loss(model(tokens[:, :-1]), tokens[:, 1:])
    loss.backward()
    grads = {name: param.grad for name, param in model.named_parameters()}
    return loss.detach(), grads, model.qk_grad_norms(), model.attention_row_mass(tokens)


def local_slice(full, shard, rank):
    """The part of `full` this rank holds: equal shapes are replicated, else split along the one differing dim."""
    if full.shape == shard.shape:
        return full
    (dim,) = [d for d in range(full.dim()) if full.shape[d] != shard.shape[d]]
    return full.narrow(dim, rank * shard.shape[dim], shard.shape[dim])


def check_rank(rank, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        tokens = random_tokens(batch=2, seq=13)
        for overrides in CONFIGS:
            config = tiny_config(**overrides)
            loss_1, grads_1, qk_1, mass_1 = run_model(config, tokens)
            set_tensor_parallel_group(dist.group.WORLD)
            try:
                assert tensor_parallel_world_size() == WORLD
                loss_2, grads_2, qk_2, mass_2 = run_model(config, tokens)
            finally:
                set_tensor_parallel_group(None)
            torch.testing.assert_close(loss_2, loss_1, **TOLERANCE)
            assert grads_2.keys() == grads_1.keys()
            for name, grad in grads_2.items():
                torch.testing.assert_close(grad, local_slice(grads_1[name], grad, rank), **TOLERANCE,
                                           msg=lambda m: f"{overrides} {name}: {m}")
            torch.testing.assert_close(torch.tensor(qk_2), torch.tensor(qk_1), **TOLERANCE)
            # Row mass is reported in fp32.
            torch.testing.assert_close(torch.tensor(mass_2), torch.tensor(mass_1), rtol=1e-6, atol=1e-6)
    finally:
        dist.destroy_process_group()


def spawn_ranks(check) -> None:
    """Run `check(rank, init_file)` in WORLD real processes that form one gloo group."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(check, args=(os.path.join(tmp, "init"),), nprocs=WORLD, join=True)


@pytest.mark.distributed
def test_tensor_parallel_two_ranks_match_one_rank():
    spawn_ranks(check_rank)


def check_dropout_streams(rank, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)

    def masks_of_both_ranks(dropout):
        mask = dropout(torch.ones(4096)) != 0
        both = [torch.empty_like(mask) for _ in range(WORLD)]
        dist.all_gather(both, mask)
        return both

    try:
        dropout = ShardedDropout(0.5)
        for sequence_parallel in (False, True):
            set_tensor_parallel_group(dist.group.WORLD, sequence_parallel=sequence_parallel)
            torch.manual_seed(0)  # the default stream: seeded alike on every tensor rank
            rng_tracker.seed_tensor_parallel_stream(0)
            first, second = masks_of_both_ranks(dropout)
            # Replicated activations must drop alike; sequence shards (other tokens per rank) must not.
            assert torch.equal(first, second) != sequence_parallel
        # The tensor-parallel stream is saved and restored exactly (as checkpoints do), apart from the default one.
        saved_stream, saved_default = rng_tracker.state(), torch.get_rng_state()
        expected = masks_of_both_ranks(dropout)
        masks_of_both_ranks(dropout)
        rng_tracker.set_state(saved_stream)
        torch.set_rng_state(saved_default)
        assert all(torch.equal(a, b) for a, b in zip(masks_of_both_ranks(dropout), expected))
    finally:
        set_tensor_parallel_group(None)
        dist.destroy_process_group()


@pytest.mark.distributed
def test_dropout_differs_per_tensor_rank_only_on_sequence_shards_and_its_stream_restores():
    spawn_ranks(check_dropout_streams)

"""The model under real DeepSpeed ZeRO-3 over 2 gloo processes: the tied embedding (reached from the head through a
module reference) is gathered when the head needs it, and the trainer's statistics work on the sharded parameters."""
import gc
import logging
import os

import pytest
import torch
import torch.multiprocessing as mp

from sa_megatron.training.distributed import free_port
from tests.model.tiny import VOCAB, random_tokens, tiny_config

WORLD = 2


def check_rank(rank, port):
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    from sa_megatron.model import build_model, language_model_loss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    deepspeed.utils.logger.setLevel(logging.WARNING)
    deepspeed.init_distributed(dist_backend="gloo")
    config = tiny_config(attention="sa", tie_embeddings=True, position_encoding="kerple")
    tokens = random_tokens(batch=2, seq=17)  # the same batch on both ranks: averaged grads = single-batch grads
    torch.manual_seed(0)
    reference = build_model(config, VOCAB)
    torch.manual_seed(0)
    model = build_model(config, VOCAB)
    ref_loss = language_model_loss(reference(tokens[:, :-1]), tokens[:, 1:])
    ref_loss.backward()
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
                                      config={"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 3}})
    loss = language_model_loss(engine(tokens[:, :-1]), tokens[:, 1:])
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    engine.backward(loss)
    torch.testing.assert_close(torch.tensor(engine.module.qk_grad_norms(safe_get_full_grad)),
                               torch.tensor(reference.qk_grad_norms()), rtol=1e-5, atol=1e-7)
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        torch.testing.assert_close(torch.tensor(engine.module.attention_row_mass(tokens)),
                                   torch.tensor(reference.attention_row_mass(tokens)), rtol=1e-6, atol=1e-6)
    engine.step()
    torch.distributed.destroy_process_group()
    # The ZeRO-3 engine sits in reference cycles; left to interpreter shutdown, their native teardown sometimes
    # aborts the process ("terminate called without an active exception"). Free them while Python is alive.
    del engine, model
    gc.collect()


@pytest.mark.distributed
def test_zero3_matches_the_plain_model(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # The Triton tests switch the interpreter on for this process; the ranks must not inherit it (DeepSpeed's
    # ZeRO-3 then runs Triton code interpreted, slowly, and the ranks have been seen to abort).
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # gloo on CPU; DeepSpeed would otherwise claim GPU `rank`
    mp.spawn(check_rank, args=(free_port(),), nprocs=WORLD, join=True)

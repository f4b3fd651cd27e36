"""One tensor-parallel-size-1 state dict from the module weights of a checkpoint written at any layout.

DeepSpeed writes the module weights once per tensor rank (data-parallel rank 0 writes them; the other data ranks
hold copies):

    pipeline_parallel 1:  engine/mp_rank_TT_model_states.pt             ["module"]: the rank's whole model
    pipeline_parallel >1: engine/layer_LL-model_TT-model_states.pt      one file per layer that is a module

(with a PipelineModule the mp_rank files hold no module). A layer file holds the layer's own state dict; a tied
head is a function of the tied embedding module, so only the embedding's layer writes the shared weight.

Tensor-sharded parameters are contiguous slices of the full matrix in tensor-rank order, so concatenating the
ranks' shards along the parameter's `partition_dim` gives it back; replicated ones are equal on every rank. Which
parameters are sharded, and along which dim, is read off the TP=1 model itself (`sharded_parameter` marks them at
any size), so the merge follows every model option without a list of names.
"""

from pathlib import Path

import torch
from torch import nn

from sa_megatron.errors import CheckpointError


def merged_module_weights(engine_dir: Path, model: nn.Module, tensor_parallel: int, pipeline: bool) -> dict:
    """The fp32 state dict for `model` (a TP=1 GPTModel of the checkpoint's shape) from every tensor rank's files.

    These are the module weights, not ZeRO's fp32 master copies: a bf16 run gives its bf16-rounded weights."""
    shards = [_rank_weights(engine_dir, model, rank, pipeline) for rank in range(tensor_parallel)]
    partition_dims = {name: param.partition_dim for name, param in model.named_parameters()
                      if getattr(param, "tensor_model_parallel", False)}
    return {name: (torch.cat([shard[name] for shard in shards], dim=partition_dims[name])
                   if name in partition_dims else tensor).float()
            for name, tensor in shards[0].items()}


def _rank_weights(engine_dir: Path, model: nn.Module, rank: int, pipeline: bool) -> dict:
    """One tensor rank's weights under the GPTModel's names (a PipelineModule names them the same per layer)."""
    if not pipeline:
        path = engine_dir / f"mp_rank_{rank:02d}_model_states.pt"
        return _checked(path, _load(path).get("module"))
    module_names = {module: name for name, module in model.named_modules()}
    weights = {}
    # GPTModel.forwards runs the layers as the PipelineModule does: modules, or functions of a tied module.
    for index, layer in enumerate(model.forwards):
        if isinstance(layer, nn.Module):
            path = engine_dir / f"layer_{index:02d}-model_{rank:02d}-model_states.pt"
            state = _checked(path, _load(path))
            weights.update({f"{module_names[layer]}.{key}": tensor for key, tensor in state.items()})
    return weights


def _load(path: Path):
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - a truncated or corrupt file makes torch raise anything
        detail = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path} is damaged ({type(err).__name__}: {detail})") from None


def _checked(path: Path, state) -> dict:
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"{path} holds no module weights")
    return state

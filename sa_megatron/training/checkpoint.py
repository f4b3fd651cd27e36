"""Save, auto-resume and inference-load of training checkpoints (layout in `checkpoint_files`).

Saving is atomic: every rank writes into `.tmp-step_N`, fsyncs, and after a barrier rank 0 writes the metadata
and the COMPLETE marker and renames the directory to `step_N`. Resuming walks the step directories newest first
and sets aside (renamed `damaged-step_N.T`, with a warning naming it) any that is incomplete or fails to load; one
written for a different model shape, parallel layout, data order or tokenizer is an error, since continuing from it
would silently train something else.
"""

import contextlib
import io
import logging
import os
import subprocess
from pathlib import Path
from typing import NamedTuple, Optional

import torch
import torch.distributed as dist

import sa_megatron
from sa_megatron.config import Config, from_dict, to_dict
from sa_megatron.errors import CheckpointError
from sa_megatron.data.splits import DOCUMENT_SPLIT_METHOD
from sa_megatron.parallel import topology
from sa_megatron.training import checkpoint_files as files
from sa_megatron.training.checkpoint_merge import merged_module_weights
from sa_megatron.training.universal import UNIVERSAL_CHECKPOINT_INFO, UNIVERSAL_DIR
from sa_megatron.training.distributed import all_ranks
from sa_megatron.training.nonfinite import NonFiniteState, state_is_finite
from sa_megatron.training.rng import capture_rng_state, restore_rng_state

logger = logging.getLogger(__name__)

# The model fields that change parameter shapes or meaning; others (dropout, attention backend) may change on resume.
SHAPE_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "max_position_embeddings",
                "norm", "mlp", "bias", "tie_embeddings", "position_encoding")


def run_identity(config: Config, padded_vocab_size: int, data_parallel: int, tokenizer_sha256: str) -> dict:
    """What a checkpoint must share with the run resuming from it, plus provenance; stored in metadata.json."""
    model_shape = {name: getattr(config.model, name) for name in SHAPE_FIELDS}
    model_shape["padded_vocab_size"] = padded_vocab_size
    p = config.parallel
    return {
        "config": to_dict(config),
        "model_shape": model_shape,
        "parallel_layout": {"tensor_parallel": p.tensor_parallel, "pipeline_parallel": p.pipeline_parallel,
                            "data_parallel": data_parallel, "zero_stage": p.zero_stage},
        # Sample order is a function of these: changing one on resume would silently change the next batches.
        "data_order": {"seed": config.training.seed, "global_batch_size": config.training.global_batch_size,
                       "seq_length": config.model.seq_length, "paths": list(config.data.paths),
                       "weights": config.data.weights, "split": config.data.split,
                       "document_split": DOCUMENT_SPLIT_METHOD},
        "tokenizer_sha256": tokenizer_sha256,
        "code_version": sa_megatron.__version__,
        "git_commit": _git_commit(),
    }


def save_checkpoint(engine, save_dir, step: int, consumed_samples: int, identity: dict, keep_last: int,
                    universal_info: Optional[dict] = None, last_loss: Optional[float] = None) -> Path:
    """Write `save_dir/step_<step>` atomically from every rank; returns its path. `universal_info` (see
    `universal.py`) goes into DeepSpeed's model states, where its universal-checkpoint converter reads it.
    `last_loss`: the loss of step `step` (finite: the loop saves only after a step that was not skipped).
    Raises NonFiniteState, writing nothing, when any rank's weights or optimizer state hold NaN/inf."""
    if not all_ranks(state_is_finite(engine)):
        raise NonFiniteState(f"the weights or optimizer state at step {step} are not finite; not saved")
    save_dir = Path(save_dir)
    temp, final = save_dir / files.temp_dir_name(step), save_dir / files.step_dir_name(step)
    rank = dist.get_rank()
    if rank == 0:
        files.remove_unfinished_saves(save_dir)
        (temp / "rng").mkdir(parents=True)
    dist.barrier()
    client_state = {} if universal_info is None else {UNIVERSAL_CHECKPOINT_INFO: universal_info}
    engine.save_checkpoint(str(temp), tag=files.ENGINE_TAG, save_latest=False, client_state=client_state)
    files.write_json_durably(files.rng_file(temp, rank), capture_rng_state())
    files.fsync_tree(temp)  # every rank walks the whole tree: whichever files it wrote are among them
    dist.barrier()
    if rank == 0:
        metadata = {**identity, "iteration": step, "consumed_samples": consumed_samples,
                    "world_size": dist.get_world_size(), "last_loss": last_loss}
        files.write_json_durably(temp / files.METADATA, metadata)
        files.publish(temp, final)
        files.prune(save_dir, keep_last)
    dist.barrier()
    return final


def newest_complete_checkpoint(save_dir) -> Optional[Path]:
    return next((p for p in files.step_dirs(Path(save_dir)) if files.is_complete(p)), None)


def resume_latest(engine, save_dir, identity: dict) -> Optional[dict]:
    """Load the newest usable checkpoint into `engine` and this rank's RNGs; returns its metadata (None = fresh)."""
    engine_touched_by = None  # a checkpoint whose engine load failed part-way: the engine may hold some of it
    for checkpoint in files.step_dirs(Path(save_dir)):
        metadata = files.read_metadata(checkpoint) if files.is_complete(checkpoint) else None
        if not all_ranks(metadata is not None):
            reason = "no COMPLETE marker" if not files.is_complete(checkpoint) else f"unreadable {files.METADATA}"
            _set_aside(checkpoint, reason)
            continue
        universal = check_compatible(metadata, identity, checkpoint)
        if universal != engine.load_universal_checkpoint():
            raise CheckpointError(f"checkpoint {checkpoint} is of {'another' if universal else 'this'} layout, "
                                  f"unlike the newer ones in {save_dir}; resume from one layout at a time")
        failure = _load_engine_and_rng(engine, checkpoint, metadata["parallel_layout"], universal)
        if all_ranks(failure is None):
            return metadata
        _set_aside(checkpoint, failure or "another rank could not load its part")
        engine_touched_by = checkpoint
    if engine_touched_by is not None:
        # Loading a checkpoint overwrites all engine state; a fresh start would not, so it would begin from a mix.
        raise CheckpointError(
            f"no checkpoint in {save_dir} could be loaded and the engine may hold part of {engine_touched_by.name}; "
            "the damaged checkpoints were set aside as damaged-step_*: run again to start from scratch"
        )
    return None


def resumes_through_universal(save_dir, identity: dict) -> bool:
    """Whether the newest complete checkpoint in `save_dir` is one of another layout (loaded in universal form);
    raises if it cannot be resumed at all. False when there is none."""
    for checkpoint in files.step_dirs(Path(save_dir)):
        metadata = files.read_metadata(checkpoint) if files.is_complete(checkpoint) else None
        if metadata is not None:
            return check_compatible(metadata, identity, checkpoint)
    return False


def _union(saved: dict, current: dict) -> dict:
    """The saved values, with None for fields the checkpoint predates (so a field added later is compared too)."""
    return {**dict.fromkeys(current), **saved}


def check_compatible(metadata: dict, identity: dict, checkpoint: Path) -> bool:
    """Raise unless this run can continue from `checkpoint`; True when it continues from the checkpoint's universal
    form (`universal.py`) because it runs at another layout."""
    saved_layout, layout = metadata.get("parallel_layout", {}), identity["parallel_layout"]
    moved = [key for key in ("tensor_parallel", "pipeline_parallel", "data_parallel")
             if saved_layout.get(key) != layout[key] and not (key == "data_parallel" and layout["zero_stage"] == 0)]
    differences = [
        f"{key} {saved!r} (checkpoint) vs {identity[section].get(key)!r} (this run)"
        for section in ("model_shape", "parallel_layout", "data_order")
        for key, saved in _union(metadata.get(section, {}), identity[section]).items()
        if identity[section].get(key) != saved and not _follows_layout(section, key, layout)
    ]
    if metadata.get("tokenizer_sha256") != identity["tokenizer_sha256"]:
        differences.append("tokenizer (sha256 differs)")
    if differences:
        raise CheckpointError(
            f"checkpoint {checkpoint} does not match this run: {'; '.join(differences)}; "
            "use the original settings or a new checkpoint.save_dir"
        )
    if not moved:
        return False
    if (checkpoint / UNIVERSAL_DIR).is_dir():
        return True
    raise CheckpointError(
        f"checkpoint {checkpoint} was written at {_layout_text(saved_layout)}, this run is {_layout_text(layout)}: "
        f"run `sa-megatron checkpoint convert {checkpoint.parent}` once to resume it at another layout "
        "(`sa-megatron eval` and `generate` read it as it is)"
    )


def _layout_text(layout: dict) -> str:
    return (f"tensor_parallel={layout.get('tensor_parallel')} × pipeline_parallel={layout.get('pipeline_parallel')}"
            f" × data_parallel={layout.get('data_parallel')}")


def _follows_layout(section: str, key: str, layout: dict) -> bool:
    """Fields that may differ when the layout does: the layout itself (checked by `check_compatible`: ZeRO-0 holds
    whole states at any data-parallel size, other changes go through a universal checkpoint) and the vocabulary
    padding, a multiple of tensor_parallel (universal checkpoints strip and re-pad it)."""
    if section == "parallel_layout":
        return key in ("tensor_parallel", "pipeline_parallel", "data_parallel")
    return section == "model_shape" and key == "padded_vocab_size"


def _saved_rank(saved_layout: dict) -> int:
    """The rank of the checkpoint's layout whose RNG state this rank continues: the same pipeline stage, tensor rank
    and data-parallel rank where they existed (else the last stage / tensor rank that did, and data-parallel rank 0,
    whose streams all data ranks share)."""
    tp, dp, pp = (saved_layout[key] for key in ("tensor_parallel", "data_parallel", "pipeline_parallel"))
    data_rank = topology.data_parallel_rank() if topology.data_parallel_rank() < dp else 0
    return topology.rank_in_layout(tp, pp, dp, stage=min(topology.pipeline_stage(), pp - 1), data_rank=data_rank,
                                   tensor_rank=min(topology.tensor_parallel_rank(), tp - 1))


def _load_engine_and_rng(engine, checkpoint: Path, saved_layout: dict, universal: bool) -> Optional[str]:
    """None on success, else why this rank failed (a corrupt file makes torch/DeepSpeed raise anything)."""
    try:
        rng_state = files.read_json(files.rng_file(checkpoint, _saved_rank(saved_layout)))
        load_path, _ = engine.load_checkpoint(str(checkpoint), tag=UNIVERSAL_DIR if universal else files.ENGINE_TAG)
    except Exception as err:  # noqa: BLE001 - any failure means "not loadable", reported and skipped
        detail = str(err).strip().splitlines()[:1]
        return f"its state could not be loaded ({type(err).__name__}{': ' + detail[0] if detail else ''})"
    if load_path is None:
        return "engine state files are missing"
    restore_rng_state(rng_state)
    return None


def _set_aside(checkpoint: Path, reason: str) -> None:
    """Every rank has agreed to skip `checkpoint`: rank 0 renames it, so prune can never count it as a good one."""
    if dist.get_rank() == 0:
        aside = files.set_aside(checkpoint)
        logger.warning("warning: skipping checkpoint %s: %s; set aside as %s, trying the previous one",
                       checkpoint, reason, aside.name)


def store_tokenizer(save_dir, tokenizer) -> None:
    """Rank 0 keeps a copy of the run's tokenizer in save_dir (`checkpoint_files.store_tokenizer`)."""
    if dist.get_rank() == 0:
        files.store_tokenizer(Path(save_dir), Path(tokenizer.source), tokenizer.sha256)


class Inference(NamedTuple):
    model: torch.nn.Module  # eval mode, fp32 weights
    config: Config
    tokenizer_sha256: str  # of the tokenizer the checkpoint was trained with
    checkpoint: Path  # the step_N directory loaded


def load_for_inference(load_dir, device=None) -> Inference:
    """The model of the newest complete checkpoint in a save_dir, or of one step_N dir, on `device`
    (default: the GPU when there is one: long-context evaluation is slow on a CPU), as one TP=1 model whatever
    tensor × pipeline × data layout wrote it (see `_fp32_state_dict`)."""
    from sa_megatron.model import build_model

    checkpoint = complete_checkpoint(Path(load_dir))
    metadata = files.read_metadata(checkpoint)
    if metadata is None:
        raise CheckpointError(f"checkpoint {checkpoint} has an unreadable {files.METADATA}")
    try:
        config = from_dict(metadata["config"])
        model = build_model(config.model, metadata["model_shape"]["padded_vocab_size"])
        model.load_state_dict(_fp32_state_dict(checkpoint, metadata["parallel_layout"], model))
        tokenizer_sha256 = metadata["tokenizer_sha256"]
    except Exception as err:  # noqa: BLE001 - a damaged file makes torch/DeepSpeed raise anything
        detail = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(f"checkpoint {checkpoint} could not be loaded ({type(err).__name__}: {detail}); "
                              "pass --load SAVE_DIR/step_N to use an earlier one") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return Inference(model.float().eval().to(device), config, tokenizer_sha256, checkpoint)


def checkpoint_tokenizer(loaded: Inference, override=None):
    """The tokenizer the checkpoint was trained with: `override` (a path, generate's --tokenizer) when given, else
    the copy in its save_dir, else (checkpoints from before that copy) the recorded tokenizer.model path. Whichever it
    is, it is refused unless its sha256 is the one the checkpoint recorded."""
    from sa_megatron.data import load_tokenizer

    path = Path(override) if override else _stored_tokenizer(loaded)
    tokenizer = load_tokenizer(path)
    if tokenizer.sha256 != loaded.tokenizer_sha256:
        fix = "pass the .model it was trained with" if override else "pass --tokenizer MODEL, the one trained with"
        raise CheckpointError(
            f"tokenizer {path} is not the one checkpoint {loaded.checkpoint} was trained with (sha256 "
            f"{tokenizer.sha256[:12]}…, not {loaded.tokenizer_sha256[:12]}…); {fix}"
        )
    return tokenizer


def _stored_tokenizer(loaded: Inference) -> Path:
    copy = loaded.checkpoint.parent / files.TOKENIZER
    if copy.is_file():
        return copy
    recorded = loaded.config.tokenizer.model
    candidates = _recorded_tokenizer_paths(recorded, loaded.config.checkpoint.save_dir, loaded.checkpoint.parent)
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise CheckpointError(
            f"{loaded.checkpoint.parent} holds no {files.TOKENIZER} (older runs kept no copy) and its recorded "
            f"tokenizer.model {recorded} is not at {' or '.join(map(str, candidates))}; pass --tokenizer MODEL"
        )
    return found


def _recorded_tokenizer_paths(recorded: str, recorded_save_dir: Optional[str], save_dir: Path) -> list[Path]:
    """Where an old checkpoint's tokenizer path may point. A relative one was relative to the directory training ran
    in: when the recorded save_dir was relative too, that directory is what precedes it in the save_dir's real path
    (save_dir /home/u/proj/ckpt/125M recorded as ckpt/125M: training ran in /home/u/proj). Then this directory."""
    recorded_path = Path(recorded)
    if recorded_path.is_absolute():
        return [recorded_path]
    candidates = []
    if recorded_save_dir and not Path(recorded_save_dir).is_absolute():
        tail, real = Path(os.path.normpath(recorded_save_dir)).parts, Path(os.path.abspath(save_dir)).parts
        if ".." not in tail and real[len(real) - len(tail):] == tail:
            candidates.append(Path(*real[:len(real) - len(tail)]) / recorded_path)
    here = Path(os.path.abspath(recorded_path))
    return candidates + ([here] if here not in candidates else [])


def complete_checkpoint(load_dir: Path) -> Path:
    """`load_dir` itself when it is a complete step_N directory, else the newest complete one inside it."""
    if files.is_complete(load_dir):
        return load_dir
    newest = newest_complete_checkpoint(load_dir)
    if newest is None:
        raise CheckpointError(f"{load_dir} holds no complete checkpoint (a step_N directory with a COMPLETE marker)")
    return newest


def _fp32_state_dict(checkpoint: Path, layout: dict, model: torch.nn.Module) -> dict:
    """The weights for `model` (TP=1, the checkpoint's padded vocabulary).

    At TP=1, PP=1 under ZeRO 1-3 these are the fp32 master weights, sharded over the data ranks and gathered by
    DeepSpeed's utility. Otherwise they are the module weights merged over tensor ranks and pipeline layers
    (`checkpoint_merge`): the same numbers in an fp32 run, bf16-rounded ones from a bf16 run. So are a bf16 ZeRO-1
    run's: DeepSpeed trains it with its BF16_Optimizer, whose `bf16_zero_*` files its utility cannot read. (ZeRO-3
    runs only at TP=1, PP=1.)"""
    tensor_parallel, pipeline_parallel = layout["tensor_parallel"], layout["pipeline_parallel"]
    engine_dir = checkpoint / files.ENGINE_TAG
    zero_optimizer_files = any(engine_dir.glob("zero_pp_rank_*_optim_states.pt"))
    if layout["zero_stage"] == 0 or tensor_parallel * pipeline_parallel > 1 or not zero_optimizer_files:
        return merged_module_weights(engine_dir, model, tensor_parallel, pipeline=pipeline_parallel > 1)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    # ZeRO shards the fp32 master weights over ranks; DeepSpeed's utility gathers them (chattily: silence it).
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=files.ENGINE_TAG)


def _git_commit() -> Optional[str]:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(sa_megatron.__file__).parent,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None

"""One rank of a multi-process test job: runs `train` for each config in a JSON list, in one process group.

    RANK=r WORLD_SIZE=n MASTER_ADDR=… MASTER_PORT=… python -m tests.training.rank_worker CONFIGS.json OUT_DIR

Writes OUT_DIR/rank_<r>.json: one {"losses": {step: loss}, "grad_norms": {step: norm}, "iteration": n} per config. Reusing the process for
several configs saves the interpreter and DeepSpeed start-up that dominates these tests on CPU.
"""

import json
import os
import sys
from pathlib import Path

from sa_megatron.config import from_dict
from sa_megatron.training.loop import train


def main(configs_path: str, out_dir: str) -> None:
    results = []
    for raw in json.loads(Path(configs_path).read_text()):
        result = train(from_dict(raw))
        results.append({"losses": result.losses, "grad_norms": result.grad_norms, "iteration": result.iteration})
    Path(out_dir, f"rank_{os.environ['RANK']}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])

"""One rank of a 2-process gloo run in which rank 1 raises at step 2 (started by tests/train/test_ddp_fail.py with
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT set, not through torchrun, so that each rank's own ending is
seen). Prints the exception it ended with to stderr as ``ENDED <type>: <message>`` and exits 3.

Usage: python tests/train/ddp_fail.py OUT_DIR
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def main(out: Path) -> None:
    from workbench.methods.simclr import SimCLR
    from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig, pretrain

    rank = int(os.environ["RANK"])
    real = SimCLR.training_step

    def failing(self, batch, progress):
        if rank == 1 and progress.step == 2:
            raise RuntimeError("boom: rank 1 broke at step 2")
        return real(self, batch, progress)

    SimCLR.training_step = failing
    # log_every=1000: step 2 is no check step, so rank 0 is inside the gradient all-reduce when rank 1 fails
    cfg = PretrainConfig(method="simclr", method_options={"proj_hidden_dim": 32, "proj_output_dim": 16},
                         data=DataConfig(name="shapes", image_size=16, options={"n": 128}),
                         model=ModelConfig(backbone="small_cnn", options={"width": 8}),
                         train=TrainConfig(epochs=1, batch_size=16, log_every=1000, knn_every=0, progress="off",
                                           device="cpu"),
                         out=str(out / "runs"), name="fail")
    try:
        pretrain(cfg)
    except BaseException as e:  # noqa: BLE001 - the test reads how each rank ended
        print(f"ENDED {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(3)
    print("ENDED without error", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))

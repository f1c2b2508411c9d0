"""Data-parallel LFM training with torchrun (DistributedDataParallel over torch.distributed).

One machine, K processes (gloo on CPU; nccl when --device cuda, one GPU per process)::

    torchrun --standalone --nproc_per_node=K examples/distributed_fit.py --out runs/tree

The same run in one process (same global batch, same result up to float summation order)::

    python examples/distributed_fit.py --out runs/tree_1proc

Several machines: the same command on every node, with a rendezvous on one of them::

    torchrun --nnodes=2 --node_rank=R --nproc_per_node=K \
        --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 examples/distributed_fit.py --out /shared/runs/tree

``--out`` (checkpoints) and ``--pool-dir`` must be visible to every rank (a shared filesystem
across nodes). Rank 0 writes ``OUT/model.pt`` after every block and ``OUT/report.json`` at the end;
``--resume`` continues an interrupted run from those files with the same number of processes.
"""
import argparse
import json
import os
from pathlib import Path

import torch

import torchcfm_local as tl


class _Stop(Exception):
    pass


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="checkpoint and report directory (shared by all ranks)")
    parser.add_argument("--dataset", default="tree", help="a torchcfm_local.datasets name (default: tree)")
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--blocks", type=int, default=4, help="LFM blocks: OUSchedule(h0=0.1, rho=1.5, blocks)")
    parser.add_argument("--width", type=int, default=128, help="MLP width of each block")
    parser.add_argument("--batches-per-block", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=512, help="global batch, split over the ranks")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool-dir", default=None, help="keep the pool in memory-mapped files here")
    parser.add_argument("--chunk-size", type=int, default=None, help="pushforward chunk (bounds memory)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (each rank uses cuda:LOCAL_RANK)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--stop-after-block", type=int, default=None,
                        help="exit once this many blocks are trained (e.g. to fit a job time limit); continue with --resume")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed)  # the same initial networks on every rank and in a 1-process run
    splits = tl.datasets.load(args.dataset, n_train=args.n_train, n_val=1000, n_test=1000, seed=args.seed)
    lfm = tl.LocalFlowMatching(
        splits.dim, tl.OUSchedule(h0=0.1, rho=1.5, n_blocks=args.blocks),
        velocity_factory=lambda n: tl.MLP(splits.dim, width=args.width),
    ).to(device)

    def stop_early(block, step, loss):
        if args.stop_after_block is not None and block > args.stop_after_block:
            raise _Stop  # every rank stops at the same step; blocks 1..stop_after_block are saved

    out = Path(args.out)
    try:
        report = lfm.fit(
            splits.train, batches_per_block=args.batches_per_block, batch_size=args.batch_size, lr=args.lr,
            seed=args.seed, checkpoint_dir=out, resume=args.resume, pool_dir=args.pool_dir,
            chunk_size=args.chunk_size, progress=not args.no_progress, callback=stop_early,
        )
    except _Stop:
        print(f"stopped after block {args.stop_after_block}; continue with --resume")
        return None
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        summary = {
            "world_size": world, "dataset": args.dataset, "seconds": report.total_seconds,
            "blocks": [{"block": b.block, "batches": b.batches, "train_seconds": b.train_seconds,
                        "pushforward_seconds": b.pushforward_seconds, "losses": b.losses} for b in report.blocks],
        }
        (out / "report.json").write_text(json.dumps(summary))
        print(report.summary())
    return report


if __name__ == "__main__":
    main()

"""Scale-out measurements: data-parallel fit on 1 vs 2 processes, and a memory-mapped pushforward.

Writes ``benchmarks/results/scale.json`` and ``scale.md``.

    python benchmarks/bench_scale.py            # 10^6 x 63 pool; tree and bsds300_patches fits
    python benchmarks/bench_scale.py --quick    # small sizes, a pipeline check

* **1 vs 2 processes.** ``examples/distributed_fit.py`` runs once in one process (torch's default
  threads) and once under ``torchrun --nproc_per_node=2`` (gloo, one thread per process, as
  torchrun sets), with the same global batch and seed. Reported: seconds per phase, their ratio,
  and how far the two runs' losses and final weights are apart.
* **Memory-mapped pushforward.** In a fresh process: the training data is a ``.npy`` file opened
  with ``mmap_mode="r"``; ``train_blocks`` fills the pool and pushes it through one block (an
  untrained MLP 256x3: the cost does not depend on the weights). A thread samples the process's
  resident memory from ``/proc/self/status`` every 20 ms: anonymous memory (heap, tensors) and
  file-backed pages (memory maps, evictable page cache) separately.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "distributed_fit.py"
MIB = 2**20


# ---------------------------------------------------------------------- 1 vs 2 processes
def ddp_comparison(name: str, args: list[str], work: Path) -> dict:
    runs = {}
    for procs in (1, 2):
        out = work / f"{name}_{procs}"
        cmd = [sys.executable, str(EXAMPLE)] if procs == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", str(EXAMPLE)]
        start = time.perf_counter()
        subprocess.run([*cmd, "--out", str(out), "--no-progress", *args], check=True, capture_output=True)
        report = json.loads((out / "report.json").read_text())
        report["wall_seconds"] = time.perf_counter() - start
        runs[procs] = report
    import torch

    import torchcfm_local as tl

    one, two = runs[1], runs[2]
    loss_diff = max(float(np.max(np.abs(np.subtract(a["losses"], b["losses"])))) for a, b in zip(one["blocks"], two["blocks"]))
    models = [tl.LocalFlowMatching.load(work / f"{name}_{p}" / "model.pt") for p in (1, 2)]
    weight_diff = max(float((p - q).detach().abs().max()) for p, q in zip(models[0].parameters(), models[1].parameters()))
    row = {"task": name, "args": args, "max_loss_diff": loss_diff, "max_weight_diff": weight_diff}
    for p, rep in runs.items():
        row[f"train_s_{p}"] = sum(b["train_seconds"] for b in rep["blocks"])
        row[f"push_s_{p}"] = sum(b["pushforward_seconds"] for b in rep["blocks"])
        row[f"fit_s_{p}"] = rep["seconds"]
        row[f"wall_s_{p}"] = rep["wall_seconds"]
        row[f"block_train_s_{p}"] = [b["train_seconds"] for b in rep["blocks"]]
    row["final_loss"] = [np.mean(b["losses"][-50:]) for b in one["blocks"]]
    del torch
    return row


# ---------------------------------------------------------------------- memory-mapped pushforward
def _memory() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def pushforward_child(data: str, pool_dir: str, chunk: int) -> dict:
    """Runs in its own process; prints one JSON line."""
    import torch

    import torchcfm_local as tl

    peaks = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            mem = _memory()
            for k in peaks:
                peaks[k] = max(peaks[k], mem[k])
            time.sleep(0.02)

    torch.manual_seed(0)
    x = np.load(data, mmap_mode="r")
    dim = x.shape[1]
    lfm = tl.LocalFlowMatching(dim, tl.OUSchedule(0.1, 1.5, 2), velocity_factory=lambda n: tl.MLP(dim, width=256, depth=3))
    import torchdyn.core  # noqa: F401  (imports Lightning) before the memory baseline is taken
    base = _memory()
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    start = time.perf_counter()
    blocks = lfm.train_blocks(x, chunk_size=chunk, pool_dir=pool_dir or None, progress=False)
    next(blocks)  # block 1 ready: the pool is filled
    fill = time.perf_counter() - start
    start = time.perf_counter()
    next(blocks)  # the pool pushed through block 1
    push = time.perf_counter() - start
    stop.set()
    watcher.join()
    peaks = {k: max(v, _memory()[k]) for k, v in peaks.items()}
    return {"n": x.shape[0], "dim": dim, "chunk_size": chunk, "memmap": bool(pool_dir), "fill_seconds": fill,
            "pushforward_seconds": push, "samples_per_second": x.shape[0] / push,
            "base_anon_mib": base["RssAnon"] / MIB, "base_file_mib": base["RssFile"] / MIB, "peak_anon_mib": peaks["RssAnon"] / MIB,
            "peak_anon_over_base_mib": (peaks["RssAnon"] - base["RssAnon"]) / MIB,
            "peak_file_mib": peaks["RssFile"] / MIB, "peak_rss_mib": peaks["VmRSS"] / MIB}


def memmap_comparison(n: int, dim: int, chunks: list[int], work: Path) -> list[dict]:
    data = work / "x.npy"
    out = np.lib.format.open_memmap(data, mode="w+", dtype=np.float32, shape=(n, dim))
    rng = np.random.default_rng(0)
    for i in range(0, n, 100_000):
        out[i : i + 100_000] = rng.standard_normal((min(100_000, n - i), dim), dtype=np.float32)
    out.flush()
    del out
    rows = []
    for chunk, memmap in [(c, True) for c in chunks] + [(None, False)]:
        pool_dir = str(work / f"pool_{chunk}") if memmap else ""
        chunk = chunk or 2**20 // dim  # the library's default chunk for the in-memory run
        done = subprocess.run([sys.executable, __file__, "--child", str(data), pool_dir, str(chunk)],
                              check=True, capture_output=True, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a pipeline check)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        data, pool_dir, chunk = args.child
        print(json.dumps(pushforward_child(data, pool_dir, int(chunk))))
        return

    from torchcfm_local.bench.report import write_results

    if args.quick:
        fits = {"tree": ["--n-train", "4000", "--batches-per-block", "50", "--blocks", "2"]}
        n, chunks = 20_000, [1024]
    else:
        fits = {
            "tree": ["--dataset", "tree", "--blocks", "4", "--width", "128", "--batches-per-block", "500",
                     "--batch-size", "512"],
            "bsds300_patches": ["--dataset", "bsds300_patches", "--blocks", "4", "--width", "512",
                                "--batches-per-block", "300", "--batch-size", "512"],
        }
        n, chunks = 1_000_000, [4096, 65536]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ddp = [ddp_comparison(name, fit_args, work) for name, fit_args in fits.items()]
        pushes = memmap_comparison(n, 63, chunks, work)

    lines = ["## Data-parallel fit: 1 process (default threads) vs 2 gloo processes (1 thread each), same global batch",
             "", "| task | train s (1 proc / 2 procs) | ratio | pushforward s (1 / 2) | ratio | max loss diff | max weight diff |",
             "|---|---|---|---|---|---|---|"]
    for r in ddp:
        lines.append(
            f"| {r['task']} | {r['train_s_1']:.1f} / {r['train_s_2']:.1f} | {r['train_s_2'] / r['train_s_1']:.2f} | "
            f"{r['push_s_1']:.2f} / {r['push_s_2']:.2f} | {r['push_s_2'] / max(r['push_s_1'], 1e-9):.2f} | "
            f"{r['max_loss_diff']:.1e} | {r['max_weight_diff']:.1e} |")
    lines += ["", "Arguments of `examples/distributed_fit.py`: " + "; ".join(f"{r['task']}: `{' '.join(r['args'])}`" for r in ddp),
              "", f"## Pushforward of a {n} x 63 pool through one block (MLP 256x3, 8 RK4 steps)", "",
              "| pool | chunk | pushforward s | samples/s | peak anon MiB (over start) | peak file-backed MiB (over start) | peak RSS MiB |",
              "|---|---|---|---|---|---|---|"]
    for r in pushes:
        lines.append(
            f"| {'memory-mapped' if r['memmap'] else 'in memory'} | {r['chunk_size']} | {r['pushforward_seconds']:.1f} | "
            f"{r['samples_per_second']:.0f} | {r['peak_anon_mib']:.0f} ({r['peak_anon_over_base_mib']:+.0f}) | "
            f"{r['peak_file_mib']:.0f} ({r['peak_file_mib'] - r['base_file_mib']:+.0f}) | {r['peak_rss_mib']:.0f} |")
    lines += ["", "\"Over start\" is the increase over the process after imports and model construction, just "
              "before `train_blocks`. The training data is a memory-mapped `.npy` file in every row, so its pages "
              "are file-backed (as are the shared libraries, about 350 MiB of the start). Anonymous memory is what "
              "the process owns; file-backed pages are the kernel's cache of mapped files and can be evicted "
              "under memory pressure."]
    json_path, md_path = write_results(args.out, "scale" + ("_quick" if args.quick else ""),
                                       {"ddp": ddp, "pushforward": pushes}, "\n".join(lines))
    print(md_path.read_text())


if __name__ == "__main__":
    main()

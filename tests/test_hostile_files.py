"""Every file the package reads, damaged every way in hostile.CORRUPTIONS (issue 16, part 2).

One case = one reader x one corruption, in a fresh directory (see tests/hostile.py for the rules):
the loader raises a documented exception whose message names the damaged file, or loads exactly
what was written; loading *other* contents is accepted only for damage inside the data of a format
that has no integrity check (the reader's ``payload`` ranges: ``.npy`` arrays, CSV rows, HDF5
datasets, the values of a CIFAR pickle, JSON values of ``pool.json``), never for our ``.pt`` files,
which carry a SHA-256 of their contents (torchcfm_local.checkpoint), nor for ``.npz`` files or
TorchScript weights, whose zip CRC-32s are checked. Nothing in the directory may be written, moved
or deleted. ``benchmarks/reliability_table.py`` runs the same cases plus a seeded fuzz.
"""
import os
import warnings

import pytest

from hostile import CORRUPTIONS, run_case
from hostile_readers import READERS

CASES = [pytest.param(reader, corruption, id=f"{reader.name}-{corruption}".replace(" ", "_"))
         for reader in READERS for corruption in CORRUPTIONS]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("pristine")


@pytest.mark.parametrize("reader,corruption", CASES)
def test_hostile_file(reader, corruption, tmp_path, scratch):
    if corruption == "no-read-permission" and os.geteuid() == 0:
        pytest.skip("running as root, which reads files without read permission")
    if corruption in reader.not_applicable:
        pytest.skip(f"not applicable: {reader.not_applicable[corruption]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notices
        out = run_case(reader, corruption, tmp_path / "case", scratch)
    assert out.ok, f"{reader.loader} on {reader.target} ({corruption}: {out.detail}): {out.result}; " \
                   f"{out.problem}. Message: {out.message!r}"


def test_the_corpus_covers_every_reader_and_corruption():
    names = {r.name for r in READERS}
    assert {"model .pt", "fit model.pt", "fit pool.pt", "fit progress.pt", "policy .pt", "distilled .pt",
            "pool.json", "pool buffer .npy", "demos .npz", "FID stats .npz", "CIFAR-10 batch",
            "MAF power data.npy", "MAF gas .npz", "MAF hepmass .csv"} <= names
    assert all(r.other in names and r.other != r.name for r in READERS)
    assert {"empty", "other-format", "directory", "no-read-permission"} <= set(CORRUPTIONS)
    assert sum(c.startswith("truncate") for c in CORRUPTIONS) >= 3 and sum(c.startswith("flip") for c in CORRUPTIONS) >= 3

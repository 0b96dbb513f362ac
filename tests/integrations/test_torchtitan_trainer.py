"""torchtitan's own trainer with LLR, as a user runs it (``--module ... --config ...``), on 2 CPU ranks with an
interleaved pipeline (2 stages per rank, 4 in all) and its checkpoint manager. What torchtitan 0.3.0 needs to run on
CPU is in ``torchtitan_cpu.py`` (each shim says why); the LLR code under test is unchanged.

Checks: the policy spans all four stages (the multipliers are paper Eq. 3 in float64 over every stage's alphas, and
differ from each stage normalising its own), and a run resumed from torchtitan's step-2 checkpoint logs the same
losses and ends with the same multipliers as the uninterrupted run."""
import os
import random
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import free_port, requires

try:
    import torchtitan  # noqa: F401

    MISSING = None
except ImportError as e:
    MISSING = f"torchtitan is not installed ({e})"

pytestmark = requires(MISSING, "torchtitan (pip install -e .[torchtitan])")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
S, STEPS = 3.0, 4  # llama3_cpu_llr: s=3, interval 2 (updates before steps 0 and 2, 0-based)


def run_trainer(work: str, assets: str, dump: str, seed: int, *extra: str) -> dict[int, float]:
    """One torchtitan training run on 2 CPU ranks; returns {step: loss} as the last stage logs it."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           os.path.join(HERE, "torchtitan_cpu.py"), "--module", "torchtitan_cpu", "--config", "llama3_cpu_llr",
           "--parallelism.pipeline_parallel_degree", "2", "--parallelism.pipeline_parallel_schedule", "Interleaved1F1B",
           "--parallelism.pipeline_parallel_microbatch_size", "2", "--training.local_batch_size", "4",
           "--training.seq_len", "64", "--training.steps", str(STEPS), "--hf_assets_path", assets,
           "--dataloader.dataset_path", os.path.join(assets, "data"), "--dump_folder", os.path.join(work, "out"),
           "--checkpoint.enable", "--checkpoint.interval", "2", "--debug.seed", str(seed), *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, HERE, os.environ.get("PYTHONPATH", "")]),
           "LLR_TORCHTITAN_DUMP": dump, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    losses = {}
    for step, loss in re.findall(r"step:\s+(\d+)\s+\S*\s*loss:\s+(-?[0-9.]+)", re.sub(r"\x1b\[[0-9;]*m", " ", log)):
        if float(loss) >= 0:  # ranks without the last stage log -1
            losses[int(step)] = float(loss)
    return losses


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted run (checkpoints at steps 2 and 4), then a run resumed from the step-2 checkpoint."""
    sys.path.insert(0, HERE)
    from torchtitan_assets import make_assets  # no torchtitan import: the CPU shims stay in the trainer processes

    seed = int(os.environ.get("LLR_TEST_SEED") or random.SystemRandom().randrange(2**31))
    print(f"seed = {seed}  (replay: LLR_TEST_SEED={seed})")
    work = str(tmp_path_factory.mktemp("torchtitan"))
    assets = os.path.join(work, "assets")
    make_assets(assets, seed=seed)
    first = run_trainer(work, assets, os.path.join(work, "first"), seed)
    shutil.rmtree(os.path.join(work, "out", "checkpoint", f"step-{STEPS}"))
    resumed = run_trainer(work, assets, os.path.join(work, "resumed"), seed)
    load = lambda name: [torch.load(os.path.join(work, f"{name}.{r}"), weights_only=False) for r in range(2)]  # noqa: E731
    return first, resumed, load("first"), load("resumed")


def test_one_policy_over_all_stages(runs):
    _, _, ranks, _ = runs
    assert [r["stages"] for r in ranks] == [[0, 2], [1, 3]] and all(r["group_world"] == 2 for r in ranks)
    parts = sorted(((s, p) for r in ranks for s, p in zip(r["stages"], r["parts"])), key=lambda x: x[0])
    assert all(p["step"] == STEPS and p["num_updates"] == 2 for _, p in parts)
    kinds = {n: k for _, p in parts for n, k in zip(p["names"], p["kinds"])}
    assert kinds["tok_embeddings.weight"] == "embedding" and kinds["lm_head.weight"] == "lm_head"
    # paper Eq. 3 in float64 over the hidden matrices of all stages (the embedding pinned at s)
    rows = [(n, float(a), float(m), st, k) for _, p in parts
            for n, a, m, st, k in zip(p["names"], p["alphas"], p["mult"], p["status"], p["kinds"])
            if k not in ("vector", "embedding") and st == "ok"]  # others keep their previous multiplier
    assert len(rows) >= 20, "the test needs usable alphas"
    alpha = np.array([a for _, a, *_ in rows])
    expected = 1.0 + (alpha - alpha.min()) / (alpha.max() - alpha.min()) * (S - 1.0)
    got = np.array([m for _, _, m, *_ in rows])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    emb = parts[0][1]["names"].index("tok_embeddings.weight")
    assert float(parts[0][1]["mult"][emb]) == S
    # each stage alone would stretch its own range: the shared policy matters here
    own = []
    for _, p in parts:
        use = [k not in ("vector", "embedding") and st == "ok" for k, st in zip(p["kinds"], p["status"])]
        a = np.array([float(x) for x, u in zip(p["alphas"], use) if u])
        m = np.array([float(x) for x, u in zip(p["mult"], use) if u])
        own.append(np.abs(1.0 + (a - a.min()) / (a.max() - a.min()) * (S - 1.0) - m).max())
    assert max(own) > 5e-3


def test_resume_from_torchtitans_checkpoint(runs):
    first, resumed, a, b = runs
    assert sorted(first) == list(range(1, STEPS + 1)) and sorted(resumed) == [3, 4]
    assert all(resumed[s] == first[s] for s in (3, 4)), (first, resumed)
    assert first[STEPS] < first[1], "the loss should fall"
    for ra, rb in zip(a, b):
        for pa, pb in zip(ra["parts"], rb["parts"]):
            assert pa["status"] == pb["status"] and torch.equal(pa["mult"], pb["mult"])
            assert torch.equal(pa["alphas"].nan_to_num(), pb["alphas"].nan_to_num())

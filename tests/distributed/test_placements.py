"""The pieces of the layout-general LLR update, in one process: where each rank's block of a DTensor lies (against
torch's own shard arithmetic), the memory budget's chunks (budget and cuSOLVER's batch limit), the budget
argument's errors, and a budgeted update equal to an unbounded one."""
import os
import random
import sys

import pytest
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
from conftest import requires
from tiny_models import TinyLlama

from llr_kernels import LLRAdamW, LLRMuon
from llr_kernels.optim import spectral_update
from llr_kernels.optim.budget import Chunker, short_long, syev_max_batch, update_bytes
from llr_kernels.optim.placements import block_of

pytestmark = requires(None if dist.is_available() else "this torch build has no torch.distributed", "torch.distributed")


def test_blocks_are_torchs_shards(seed):
    """For random shapes (uneven and smaller than the mesh too), meshes of 1-3 dimensions and Shard(0) / Shard(1) /
    Replicate placements, every coordinate's block has the local shape and global offset torch computes."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset

    rng = random.Random(seed)
    for _ in range(200):
        shape = (rng.randint(1, 13), rng.randint(1, 13))
        mesh_shape = tuple(rng.randint(1, 4) for _ in range(rng.randint(1, 3)))
        placements = tuple(rng.choice([Shard(0), Shard(1), Replicate(), Shard(-1)]) for _ in mesh_shape)
        coord = [rng.randrange(n) for n in mesh_shape]
        normal = tuple(Shard(pl.dim % 2) if pl.is_shard() else pl for pl in placements)  # as a DTensor stores them
        local, offset = _compute_local_shape_and_global_offset(shape, mesh_shape, coord, normal)
        block = block_of(shape, mesh_shape, placements, tuple(coord))
        got_shape = tuple(s.stop - s.start for s in block)
        assert got_shape == tuple(local), (shape, mesh_shape, placements, coord)
        if all(local):  # torch's offset of an empty shard is a convention of its own
            assert tuple(s.start for s in block) == tuple(offset), (shape, mesh_shape, placements, coord)


def test_chunks_respect_budget_and_cusolver_batch_limit(seed):
    """Chunks (a flush whenever must_flush says so) never exceed the budget unless one matrix alone does, and never
    hold more matrices of one short side than cuSOLVER's batched eigensolver takes (n * n * batch <= 2^31 - 1)."""
    assert syev_max_batch(4096) == 127 and syev_max_batch(8192) == 31  # floor((2^31 - 1) / n^2)
    assert syev_max_batch(4096) * 4096 * 4096 <= 2**31 - 1 < (syev_max_batch(4096) + 1) * 4096 * 4096
    rng = random.Random(seed)
    for _ in range(50):
        budget = rng.randint(1, 40) * 1000
        chunker = Chunker(budget)
        chunks, current = [], []
        for _ in range(rng.randint(1, 30)):
            shape = (rng.randint(1, 8), rng.randint(1, 8))
            need = rng.randint(100, 3000)
            if chunker.must_flush(shape, need):
                chunks.append(current)
                current = []
                chunker.reset()
            chunker.add(shape, need)
            current.append((shape, need))
        chunks.append(current)
        for c in chunks:
            assert len(c) == 1 or sum(n for _, n in c) <= budget
    big = Chunker(None)  # no byte budget: only the batch limit splits (n = 46341: n^2 > 2^31 - 1, one per chunk)
    big.add((46341, 46341), 1)
    assert big.must_flush((46341, 50000), 1) and not big.must_flush((100, 100), 1)


def test_update_bytes_counts_gather_cast_and_float64_tiers():
    """The memory model, written out: gathered copy m n e, float64 cast 8 m n, float32 Gram 4 n^2, float64 Gram,
    eigensolver copy and workspace 3 * 8 n^2 + 2 * 8 n."""
    m, n = 11008, 4096
    assert short_long((m, n)) == short_long((n, m)) == (n, m)
    assert update_bytes((m, n), 2, True) == 2 * m * n + 8 * m * n + 4 * n * n + 24 * n * n + 16 * n
    assert update_bytes((m, n), 4, False) == 8 * m * n + 4 * n * n + 24 * n * n + 16 * n


def test_budget_smaller_than_one_matrix_is_refused(one_rank_group):
    """A budget below what the largest matrix needs fails at construction, naming it, its shape and its layout."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    model = TinyLlama()
    with pytest.raises(ValueError, match=r"^spectral_memory_budget=1000 bytes is smaller than what measuring one "
                                         r"matrix needs: 'model\.embed_tokens\.weight' \(shape \(96, 64\), a plain tensor\) "
                                         rf"needs about {update_bytes((96, 64), 4, True)} bytes"):
        LLRAdamW(model, spectral_memory_budget=1000)
    mesh = init_device_mesh("cpu", (1,))
    gate = model.model.layers[0].mlp.gate_proj  # 128 x 64: the largest matrices
    gate.weight = torch.nn.Parameter(distribute_tensor(gate.weight.detach(), mesh, [Shard(1)]))
    need = update_bytes((128, 64), 4, True)
    with pytest.raises(ValueError, match=r"'model\.layers\.0\.mlp\.gate_proj\.weight' \(shape \(128, 64\), placements "
                                         r"\(Shard\(dim=1\),\) on a 1-D mesh of shape \(1,\)\) needs about"):
        LLRMuon(model, spectral_memory_budget=need - 1)
    LLRMuon(model, spectral_memory_budget=need)
    for bad in (0, -5, 1.5, True, "1G"):
        with pytest.raises(TypeError, match="^spectral_memory_budget must be None or a positive int"):
            LLRAdamW(TinyLlama(), spectral_memory_budget=bad)


def test_budgeted_update_equals_unbounded(seed, monkeypatch):
    """Under a budget of 1.5 x the largest matrix's need the update measures in several chunks, none above the
    budget by the memory model, and gives exactly the alphas of one unbounded call."""
    torch.manual_seed(seed)
    model = TinyLlama()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    budget = int(1.5 * update_bytes((128, 64), 4, True))
    calls = []
    original = spectral_update.measure_matrices

    def recording(opt, mats, stacked=None):
        calls.append([tuple(m.shape) for m in mats])
        return original(opt, mats, stacked)

    monkeypatch.setattr(spectral_update, "measure_matrices", recording)
    bounded = LLRAdamW(model, min_eigs=8, backend="torch", spectral_memory_budget=budget).update_alphas(0)
    chunks = list(calls)
    calls.clear()
    free = LLRAdamW(model, min_eigs=8, backend="torch").update_alphas(0)
    assert len(calls) == 1 and len(chunks) > 3
    assert sum(len(c) for c in chunks) == len(calls[0]) == sum(p.dim() == 2 for p in model.parameters())
    for c in chunks:  # plain matrices are not copies: only casts, Grams and workspace count
        assert sum(update_bytes(s, 4, False) for s in c) <= budget
    assert bounded.isfinite().sum() >= 8 and torch.equal(bounded.nan_to_num(), free.nan_to_num())


def test_fsdp_over_tp_strided_shards_are_blocks():
    """FSDP2 over a tensor-parallel Shard(0) gives (_StridedShard(0, sf=2), Shard(0)) on a (dp=2, tp=2) mesh: sharded
    right to left, so (torch's own example, 8 rows) coordinate (dp, tp) holds rows 2 (2 tp + dp) .. + 2."""
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.placement_types import _StridedShard

    placements = (_StridedShard(0, split_factor=2), Shard(0))
    for dp in range(2):
        for tp in range(2):
            rows, cols = block_of((8, 8), (2, 2), placements, (dp, tp))
            assert (rows.start, rows.stop) == (2 * (2 * tp + dp), 2 * (2 * tp + dp) + 2) and (cols.start, cols.stop) == (0, 8)
    with pytest.raises(ValueError, match="do not give each rank one block"):  # a split factor that is not TP's
        block_of((8, 8), (2, 2), (_StridedShard(0, split_factor=4), Shard(0)), (0, 0))

"""One layerwise policy across pipeline stages and model parts (``llr_kernels.optim.policy_group``).

Reference: one optimizer over the whole model. The pipeline is emulated exactly: every rank (gloo, CPU) holds the
whole model and runs the same forward and backward on the same batch, so every gradient equals the single
process's bit for bit; each rank's optimizers step only its own stages' parameters, which are then broadcast from
their owner. Any difference in multipliers therefore comes from the policy alone, and the stage optimizers must
reproduce the reference's multipliers, weight-decay multipliers, statuses and weights exactly, for every policy.
One matrix is planted with a far larger alpha than the others, so the outlier rule fires on the whole model.
"""
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
from tiny_models import TinyLlama, batches, lm_loss  # noqa: E402
from reference import power_law_matrix  # noqa: E402

from conftest import free_port, require, requires  # noqa: E402
from llr_kernels import LLRAdamW  # noqa: E402
from llr_kernels.dist_exit import exit_rank  # noqa: E402
from llr_kernels.optim.policy_group import PolicyGroup  # noqa: E402

pytestmark = requires(None if dist.is_available() else "this torch build has no torch.distributed", "torch.distributed")

STEPS, BLOCKS, CUT = 6, 4, 3
# updates before steps 0, 2, 4 (gradient alphas at 0, weight alphas at 2 and 4), each ramped over 2 steps;
# min_eigs=8 so the 64-wide matrices get alphas
KW = dict(lr=3e-3, weight_decay=0.1, s=3.0, interval=2, total_steps=STEPS, grad_phase=0.2, ramp_steps=2, min_eigs=8,
          backend="torch")
POLICIES = ["llr", "alphadecay", "sharpness", "rlrs", "llr-shuffled"]
PLANTED = "model.layers.3.self_attn.v_proj.weight"  # alpha ~16 against ~1.5-3 elsewhere: an outlier of the whole model
# layout -> (ranks, stages, this rank's stages); "interleaved" as torchtitan's loop-style schedules: stages r, r + 2;
# "2-stages-x-2-replicas": ranks 0, 1 and 2, 3 are two pipelines, each stage replicated (DDP-like) on two ranks that
# split its LLR update (spectral_group), the pipelines' groups each sharing one policy
LAYOUTS = {"2-stages": (2, 2, lambda r: [r]), "4-stages": (4, 4, lambda r: [r]),
           "interleaved": (2, 4, lambda r: [r, r + 2]), "2-stages-x-2-replicas": (4, 2, lambda r: [r % 2])}


def stage_of(name: str, stages: int) -> int:
    """The pipeline stage of a parameter: the embedding on the first, blocks split evenly, norm and head on the last."""
    if name.startswith("model.layers."):
        return int(name.split(".")[2]) * stages // BLOCKS
    return 0 if "embed_tokens" in name else stages - 1


def planted_model(seed: int) -> TinyLlama:
    torch.manual_seed(seed)
    model = TinyLlama(layers=BLOCKS)
    w = dict(model.named_parameters())[PLANTED]
    with torch.no_grad():
        w.copy_(power_law_matrix(64, 64, 16.0, seed=seed, scale=float(w.norm())))
    return model


def stage_optimizers(model, stages_here, stages, policy, group, spectral_group="auto"):
    named = list(model.named_parameters())
    return [LLRAdamW([(n, p) for n, p in named if stage_of(n, stages) == s], model=model, policy=policy,
                     policy_group=group, spectral_group=spectral_group, **KW) for s in stages_here]


def process_groups(rank: int, world: int, stages: int):
    """(the group the policy spans, the group that splits a stage's measurements or "auto") of this rank. Every rank
    creates every group, in the same order."""
    if world == stages or world * 2 == stages:
        return dist.group.WORLD, "auto"
    replicas = world // stages
    pipelines = [dist.new_group([d * stages + s for s in range(stages)]) for d in range(replicas)]
    replicated = [dist.new_group([d * stages + s for d in range(replicas)]) for s in range(stages)]
    return pipelines[rank // stages], replicated[rank % stages]


def train(model, opts, data, stages, owner) -> None:
    """The emulated pipeline: whole forward/backward, each rank steps its stages, owners broadcast them."""
    for idx in data:
        lm_loss(model, idx).backward()
        for opt in opts:
            opt.step()
        model.zero_grad(set_to_none=True)
        if owner is not None:
            for name, p in model.named_parameters():
                dist.broadcast(p.data, src=owner(stage_of(name, stages)))


def view(model, opts, stages_here, stages):
    """What must match the reference: per own stage, its parameters, multipliers, weight-decay multipliers, statuses,
    alphas (NaN as NaN)."""
    out = {}
    for s, opt in zip(stages_here, opts):
        out[s] = {"params": {n: p.detach().clone() for n, p in model.named_parameters() if stage_of(n, stages) == s},
                  "mult": opt.multipliers(), "wd": opt.policy.wd_multipliers(opt.llr_step), "status": list(opt.layer_status),
                  "alphas": opt.policy.alphas.clone(), "names": [l.name for l in opt.layers], "split": opt.last_split}
    return out


def worker(rank: int, layout: str, seed: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    world, stages, mine = LAYOUTS[layout]
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    here = mine(rank)
    owner = lambda s: s % world  # noqa: E731  (replicas: the first pipeline's ranks; the others hold the same values)
    pipeline, replicated = process_groups(rank, world, stages)
    data = batches(STEPS, seed=seed)
    explicit = layout == "interleaved"  # stage indices needed: rank order is not model order there
    results = {}
    for policy in POLICIES:
        model = planted_model(seed)  # the reference, in this process: the same threads as the stage runs
        ref = LLRAdamW(model, policy=policy, **KW)
        train(model, [ref], data, stages, None)
        ref_out = {"mult": ref.multipliers(), "wd": ref.policy.wd_multipliers(STEPS), "status": list(ref.layer_status),
                   "alphas": ref.policy.alphas.clone(), "names": [l.name for l in ref.layers],
                   "params": {n: p.detach().clone() for n, p in model.named_parameters()}}
        model = planted_model(seed)
        group = PolicyGroup(pipeline, stages=here if explicit else None)
        opts = stage_optimizers(model, here, stages, policy, group, replicated)
        train(model, opts, data, stages, owner)
        results[policy] = {"ref": ref_out, "group": view(model, opts, here, stages)}
        if policy == "llr":  # without the group each stage stretches its own range: the test can tell
            model = planted_model(seed)
            opts = stage_optimizers(model, here, stages, policy, None, replicated)
            train(model, opts, data, stages, owner)
            results[policy]["alone"] = view(model, opts, here, stages)
    torch.save(results, f"{out}.{rank}")
    exit_rank()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_stages_share_one_policy(layout, seed, tmp_path):
    """2 and 4 stages (one optimizer per rank), an interleaved layout (2 ranks, 2 model parts each, stages r and
    r + 2), and 2 stages each replicated on 2 ranks that split its measurements: every policy's multipliers,
    weight-decay multipliers, statuses (the planted outlier included) and final weights equal one optimizer's over
    the whole model exactly, on every rank; stage optimizers without the group do not."""
    world, stages, _ = LAYOUTS[layout]
    out = str(tmp_path / "res")
    mp.spawn(worker, args=(layout, seed, free_port(), out), nprocs=world, join=True)
    res = [torch.load(f"{out}.{r}", weights_only=True) for r in range(world)]
    for policy in POLICIES:
        ref = res[0][policy]["ref"]
        per_stage = {s: v for r in res for s, v in r[policy]["group"].items()}
        assert sorted(per_stage) == list(range(stages))
        for r, rank_res in enumerate(res):  # replicas of a stage agree exactly (and split the measurements)
            for s, v in rank_res[policy]["group"].items():
                assert torch.equal(v["mult"], per_stage[s]["mult"]) and v["status"] == per_stage[s]["status"]
                if world > stages and policy in ("llr", "llr-shuffled", "alphadecay"):
                    assert 0 < v["split"]["layers_measured"] < v["split"]["layers"], v["split"]
        if policy in ("llr", "llr-shuffled", "alphadecay"):
            assert ref["alphas"].isfinite().sum() >= 20, "the test needs measured alphas"
            i = ref["names"].index(PLANTED)
            assert ref["status"][i] == "outlier", "the planted matrix must be an outlier of the whole model"
        if policy == "alphadecay":
            assert len(set(ref["wd"].tolist())) > 10, "the test needs per-layer weight decays"
        else:
            assert len(set(ref["mult"].tolist())) > 3, "the test needs per-layer multipliers"
        names = [n for s in range(stages) for n in per_stage[s]["names"]]
        assert names == ref["names"], "stage layers in stage order must be the model's layers in order"
        for key in ("mult", "wd", "alphas"):
            got = torch.cat([per_stage[s][key] for s in range(stages)])
            assert torch.equal(got.isnan(), ref[key].isnan()), (policy, key)
            assert torch.equal(got.nan_to_num(), ref[key].nan_to_num()), (policy, key, (got - ref[key]).abs().max())
        assert [st for s in range(stages) for st in per_stage[s]["status"]] == ref["status"], policy
        for s in range(stages):
            for n, p in per_stage[s]["params"].items():
                assert torch.equal(p, ref["params"][n]), (policy, s, n)
    alone = {s: v["mult"] for r in res for s, v in r["llr"]["alone"].items()}
    alone = torch.cat([alone[s] for s in range(stages)])
    assert (alone - res[0]["llr"]["ref"]["mult"]).abs().max() > 5e-3, "per-stage optimizers should differ here"


def resume_worker(rank: int, seed: int, port: int, ckpt: str, out: str) -> None:
    """Interleaved layout, LLR with AlphaDecay: uninterrupted, and cut at CUT (inside a ramp), saved with DCP (all
    parts of all ranks in one checkpoint, keyed by FQN), resumed into fresh models, optimizers and group."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    world, stages, mine = LAYOUTS["interleaved"]
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    here, owner, data, policy = mine(rank), (lambda s: s % world), batches(STEPS, seed=seed), "llr+alphadecay"

    def fresh(model_seed):
        model = planted_model(model_seed)
        return model, stage_optimizers(model, here, stages, policy, PolicyGroup(dist.group.WORLD, stages=here))

    model, opts = fresh(seed)
    train(model, opts, data, stages, owner)
    results = {"uninterrupted": view(model, opts, here, stages)}
    model, opts = fresh(seed)
    train(model, opts, data[:CUT], stages, owner)
    results["ramping_at_cut"] = opts[0].policy.ramping(CUT)
    flat = StateDictOptions(flatten_optimizer_state_dict=True)  # per-FQN keys: the ranks' param groups do not collide
    dcp.save({"model": model.state_dict(), "optim": get_optimizer_state_dict(model, opts, options=flat)},
             checkpoint_id=ckpt)
    model, opts = fresh(seed + 1)
    template = {"model": model.state_dict(), "optim": get_optimizer_state_dict(model, opts, options=flat)}
    dcp.load(template, checkpoint_id=ckpt)
    model.load_state_dict(template["model"])
    set_optimizer_state_dict(model, opts, template["optim"], options=flat)
    results["resumed_at"] = [opt.llr_step for opt in opts]
    train(model, opts, data[CUT:], stages, owner)
    results["resumed"] = view(model, opts, here, stages)
    torch.save(results, f"{out}.{rank}")
    exit_rank()


def test_resume_through_dcp(seed, tmp_path):
    """A pipeline run with two model parts per rank, saved with torch.distributed.checkpoint inside a multiplier ramp
    and resumed into fresh optimizers and a fresh group, ends exactly where the uninterrupted run does."""
    out = str(tmp_path / "res")
    mp.spawn(resume_worker, args=(seed, free_port(), str(tmp_path / "ckpt"), out), nprocs=2, join=True)
    for r in range(2):
        res = torch.load(f"{out}.{r}", weights_only=True)
        assert res["ramping_at_cut"] and res["resumed_at"] == [CUT, CUT]
        for s, a in res["uninterrupted"].items():
            b = res["resumed"][s]
            assert a["status"] == b["status"] and torch.equal(a["mult"], b["mult"]) and torch.equal(a["wd"], b["wd"])
            assert len(set(a["wd"].tolist())) > 2, "the test needs per-layer weight decays"
            for n in a["params"]:
                assert torch.equal(a["params"][n], b["params"][n]), (s, n)


@pytest.mark.parametrize("cls", ["LLRAdamW", "LLRMuon"])
def test_parts_on_one_rank_without_process_group(cls, seed):
    """Two model parts on one process (no process group): the same multipliers and weights, bit for bit, as one
    optimizer over the model, for LLRMuon too; the part optimizers alone differ."""
    from llr_kernels import LLRMuon

    kw = dict(KW) if cls == "LLRAdamW" else {**KW, "lr": 2e-2, "adamw_lr": 3e-3, "s": 2.0, "ns_dtype": torch.float32}
    make = LLRAdamW if cls == "LLRAdamW" else LLRMuon
    data = batches(STEPS, seed=seed)

    def run(group=None, whole=False):
        model = planted_model(seed)
        named = list(model.named_parameters())
        parts = [named] if whole else [[(n, p) for n, p in named if stage_of(n, 2) == s] for s in (0, 1)]
        opts = [make(part, model=model, policy_group=group, **kw) for part in parts]
        train(model, opts, data, 2, None)
        # by layer name: LLRMuon orders its layers Muon matrices first, so positions differ from the parts'
        return model, {l.name: (float(o.multipliers()[i]), o.layer_status[i])
                       for o in opts for i, l in enumerate(o.layers)}

    ref_model, ref = run(whole=True)
    model, got = run(PolicyGroup())
    assert len({m for m, _ in ref.values()}) > 3 and "outlier" in {st for _, st in ref.values()}
    assert got == ref
    for (n, a), b in zip(ref_model.named_parameters(), model.parameters()):
        assert torch.equal(a, b), n
    alone = run()[1]
    assert max(abs(alone[n][0] - ref[n][0]) for n in ref) > 5e-3, "the parts alone should differ here"


def test_group_misuse_is_refused():
    """Members with different policy settings, at different steps, or two parts claiming one stage: a clear error,
    not a silently different policy."""
    model = planted_model(0)
    named = list(model.named_parameters())
    first, second = [(n, p) for n, p in named if stage_of(n, 2) == 0], [(n, p) for n, p in named if stage_of(n, 2) == 1]
    group = PolicyGroup()
    a = LLRAdamW(first, model=model, policy_group=group, **KW)
    b = LLRAdamW(second, model=model, policy_group=group, **{**KW, "s": 2.0})  # noqa: F841 (a member: kept alive)
    lm_loss(model, batches(1)[0]).backward()
    with pytest.raises(ValueError, match="different policy configs"):
        a.step()
    group = PolicyGroup()
    a = LLRAdamW(first, model=model, policy_group=group, **KW)
    b = LLRAdamW(second, model=model, policy_group=group, **KW)
    b.llr_step = 1
    with pytest.raises(RuntimeError, match="different steps"):
        a.step()
    group = PolicyGroup(stages=[0, 1, 2])
    a = LLRAdamW(first, model=model, policy_group=group, **KW)
    b = LLRAdamW(second, model=model, policy_group=group, **KW)
    with pytest.raises(ValueError, match="names 3 model parts but 2 optimizers"):
        a.step()
    with pytest.raises(ValueError, match="repeat a stage"):
        PolicyGroup(stages=[0, 0])
    with pytest.raises(ValueError, match="a further optimizer joined"):
        group = PolicyGroup(stages=[0])
        a = LLRAdamW(first, model=model, policy_group=group, **KW)
        LLRAdamW(second, model=model, policy_group=group, **KW)
    with pytest.raises(TypeError, match="policy_group must be None or"):
        LLRAdamW(first, model=model, policy_group="pp", **KW)


def _minilm_parameters():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "benchmarks"))
    import _common as C

    path = C.trained_weights_file()
    require(None if path else f"not installed ({C.TRAINED_INSTALL})", "the trained-weights package")
    from safetensors.torch import load_file

    return [(k, torch.nn.Parameter(v.float())) for k, v in load_file(str(path)).items() if v.is_floating_point()]


@pytest.mark.parametrize("stages", [2, 3, 6])
def test_trained_weights_split_into_stages(stages):
    """The issue's measurement on trained weights (all-MiniLM-L6-v2, weight alphas, s = 3): its 6 encoder layers
    split into pipeline stages. Stage optimizers alone are off (the issue: by up to 0.09, 0.47 and 0.61 for 2, 3 and
    6 stages); with one PolicyGroup their multipliers are those of one optimizer over the model, bit for bit."""
    params = _minilm_parameters()

    def stage(name: str) -> int:
        if name.startswith("encoder.layer."):
            return int(name.split(".")[2]) * stages // 6
        return 0 if name.startswith("embeddings") else stages - 1

    whole = LLRAdamW(params, s=3.0, backend="torch")
    whole.update_metrics(0)
    assert whole.layer_status.count("ok") >= 30, "the test needs measured alphas"
    for group in (PolicyGroup(), None):
        opts = [LLRAdamW([(k, p) for k, p in params if stage(k) == s], s=3.0, backend="torch", policy_group=group)
                for s in range(stages)]
        for opt in opts:
            opt.update_metrics(0)
        got = torch.cat([opt.multipliers() for opt in opts])
        if group is not None:
            assert torch.equal(got, whole.multipliers())
            assert [st for opt in opts for st in opt.layer_status] == whole.layer_status
        else:
            assert (got - whole.multipliers()).abs().max() > 0.05

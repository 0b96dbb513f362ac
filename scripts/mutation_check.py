#!/usr/bin/env python3
"""Mutation check: do the tests catch small deliberate bugs? (Not part of the default CI run: it is slow.)

Each mutant is one (file, old snippet, new snippet) replacement: an argument ignored, an index off by one, the LR
map reversed, a state_dict field not restored, a kernel reading another tensor's LR. For every mutant this
script copies the repository (tracked and untracked, not ignored files) to a scratch directory ONCE, applies the
mutant there, runs the relevant tests with ``-x`` and a timeout, and restores the file. A mutant is *killed*
when the tests fail, *survived* when they pass. The checkout itself is never modified.

    python scripts/mutation_check.py                 # every mutant (about an hour on 2 cores)
    python scripts/mutation_check.py --list          # names, files and test groups
    python scripts/mutation_check.py -k policy -k hill --timeout 600
    python scripts/mutation_check.py --skip cpp --no-baseline   # all but the C++ mutants, without the unmutated run

Mutants of llr_kernels/csrc/ rebuild the C++ extension into a scratch cache (minutes each); the others run with
LLR_DISABLE_EXT=1 unless they target the C++ backend's Python side (then the normal cache is reused).
A snippet that no longer occurs exactly once in its file is reported as "stale": update the list.
Exit status: 0 if every (non-stale) mutant was killed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Test groups, fastest-to-fail first (pytest stops at the first failure).
TESTS = {
    "policy": ["tests/policies/test_llr_map.py", "tests/optim/test_llr_adamw.py"],
    "optim": ["tests/optim/test_optim_table.py", "tests/optim/test_llr_adamw.py", "tests/optim/test_muon.py"],
    "adamw": ["tests/optim/test_optim_table.py", "tests/optim/test_llr_adamw.py"],
    "muon": ["tests/optim/test_muon.py", "tests/optim/test_optim_table.py"],
    "state": ["tests/optim/test_llr_adamw.py", "tests/optim/test_muon.py", "tests/policies/test_llr_map.py"],
    "hill": ["tests/optim/test_llr_adamw.py", "tests/spectral/test_hill.py"],
    "adamw_kernel": ["tests/ops/test_adamw_kernels.py", "tests/optim/test_optim_table.py"],
    "muon_kernel": ["tests/optim/test_muon.py", "tests/optim/test_optim_table.py"],
    "capturable": ["tests/optim/test_capturable.py", "tests/optim/test_compile.py"],
    "robust": ["tests/optim/test_robustness.py", "tests/policies/test_llr_map.py"],
    "hill_rank": ["tests/spectral/test_hill.py", "tests/optim/test_robustness.py", "tests/spectral/test_properties.py", "tests/spectral/test_batched.py"],
    "ckpt": ["tests/optim/test_checkpoint_portability.py", "tests/integrations/test_hf_trainer.py"],
    "add_group": ["tests/optim/test_add_param_group.py", "tests/integrations/test_hf_trainer.py"],
    "noncontig": ["tests/optim/test_noncontiguous.py"],
    "dist": ["tests/distributed/test_distributed.py"],
    "policies": ["tests/policies/test_policies.py", "tests/distributed/test_dcp.py"],
    "target": ["tests/spectral/test_target.py", "tests/spectral/test_trained_weights.py"],
    "trust": ["tests/optim/test_trust_ratio.py"],
    # issue 21's families: options x policies, resume at every step, split steps x argument table, deterministic
    # spectral cases, diagnostics, low-precision trust ratios, harness command lines
    "options": ["tests/policies/test_policy_options.py"],
    "resume": ["tests/optim/test_resume_every_step.py"],
    "dist_table": ["tests/distributed/test_dist_argument_table.py"],
    "spectral_det": ["tests/spectral/test_target_deterministic.py"],
    "diagnostics": ["tests/optim/test_diagnostics.py"],
    "trust_lp": ["tests/optim/test_trust_ratio_precision.py"],
    "cli": ["tests/harness/test_harness_cli.py"],
    "moe": ["tests/optim/test_moe_stacks.py", "tests/analysis/test_analysis_loading.py"],
}


@dataclass
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: str  # a key of TESTS
    ext: str = "off"  # "off": LLR_DISABLE_EXT=1; "on": the normal extension cache; "rebuild": csrc mutant


ADAMW, MUON, BASE = "llr_kernels/optim/adamw.py", "llr_kernels/optim/muon.py", "llr_kernels/optim/base.py"
# the layerwise policies: LLR's schedule, pins and outlier rule; the shared state machinery (update, ramp,
# state_dict); the alpha -> multiplier maps (Eq. 3 is kind="linear"); the fixed, RLRS and block helpers
LLR, PBASE, MAPS = "llr_kernels/policies/llr.py", "llr_kernels/policies/base.py", "llr_kernels/policies/maps.py"
FIXED, RLRS, BLOCKS = "llr_kernels/policies/fixed.py", "llr_kernels/policies/rlrs.py", "llr_kernels/policies/blocks.py"
TRUST = "llr_kernels/optim/trust_ratio.py"
SLQ, TARGET, BATCHED = "llr_kernels/spectral/slq.py", "llr_kernels/spectral/target.py", "llr_kernels/spectral/batched.py"
HILL = "llr_kernels/spectral/rules.py"  # hill_params: Eq. 2's indices for every spectral path; the noise level
HREF = "llr_kernels/spectral/reference.py"  # the float64 reference's rank-deficiency rule
FUSED, MAPPLY = "llr_kernels/optim/fused_adamw.py", "llr_kernels/optim/muon_apply.py"
UPDATE, PARAMS = "llr_kernels/optim/spectral_update.py", "llr_kernels/optim/params.py"
PAPER = "        return n - k - 1, n - k, k, (n - k - 0.5) / n"
REFERENCE = "    return i, i, n - i, (i + 0.5) / n"
CONFIG = ("config = LLRConfig(s, interval, total_steps, grad_phase, active_until, ramp_steps, pin_embedding, "
          "pin_lm_head, outlier_z)")


def _config_mutants(prefix: str, file: str, tests: str) -> list[Mutant]:
    """Each LLR policy argument replaced by its default in one optimizer's constructor."""
    defaults = {"s": "3.0", "interval": "500", "total_steps": "None", "grad_phase": "0.05", "active_until": "1.0",
                "ramp_steps": "0", "pin_embedding": "True", "pin_lm_head": "False", "outlier_z": "OUTLIER_Z"}
    fields = list(defaults)
    out = []
    for i, f in enumerate(fields):
        args = ", ".join(defaults[g] if g == f else g for g in fields)
        out.append(Mutant(f"{prefix}-ignores-{f}", file, CONFIG, f"config = LLRConfig({args})", tests))
    return out


MUTANTS: list[Mutant] = [
    # ----- LLRAdamW's arguments (each ignored: replaced by its default) ----------------------------
    Mutant("adamw-ignores-lr", ADAMW, "defaults = dict(lr=lr, betas=", "defaults = dict(lr=1e-3, betas=", "adamw"),
    Mutant("adamw-ignores-betas", ADAMW, "betas=tuple(betas), eps=eps,", "betas=(0.9, 0.999), eps=eps,", "adamw"),
    Mutant("adamw-ignores-eps", ADAMW, "betas=tuple(betas), eps=eps,", "betas=tuple(betas), eps=1e-8,", "adamw"),
    Mutant("adamw-ignores-weight_decay", ADAMW, "eps=eps, weight_decay=weight_decay, amsgrad", "eps=eps, weight_decay=1e-2, amsgrad", "adamw"),
    Mutant("adamw-ignores-amsgrad", ADAMW, "weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize)",
           "weight_decay=weight_decay, amsgrad=False, maximize=maximize)", "adamw"),
    Mutant("adamw-ignores-maximize", ADAMW, "weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize)",
           "weight_decay=weight_decay, amsgrad=amsgrad, maximize=False)", "adamw"),
    *_config_mutants("adamw", ADAMW, "adamw"),
    Mutant("adamw-ignores-max_grad_norm", ADAMW, "        self.max_grad_norm = max_grad_norm", "        self.max_grad_norm = None", "adamw"),
    Mutant("adamw-ignores-state_dtype", ADAMW, "        self.state_dtype = state_dtype", "        self.state_dtype = None", "adamw"),
    Mutant("adamw-ignores-backend", ADAMW, "params, defaults, llr=config, model=model, classify=classify, backend=backend,",
           "params, defaults, llr=config, model=model, classify=classify, backend=\"auto\",", "adamw"),
    Mutant("adamw-ignores-model", ADAMW, "params, defaults, llr=config, model=model, classify=classify, backend=backend,",
           "params, defaults, llr=config, model=None, classify=classify, backend=backend,", "adamw"),
    Mutant("adamw-ignores-classify", ADAMW, "params, defaults, llr=config, model=model, classify=classify, backend=backend,",
           "params, defaults, llr=config, model=model, classify=None, backend=backend,", "adamw"),
    Mutant("adamw-ignores-hill_method", ADAMW, "            hill_method=hill_method, hill_variant=hill_variant, min_eigs=min_eigs,",
           "            hill_method=\"auto\", hill_variant=hill_variant, min_eigs=min_eigs,", "adamw"),
    Mutant("adamw-ignores-hill_variant", ADAMW, "            hill_method=hill_method, hill_variant=hill_variant, min_eigs=min_eigs,",
           "            hill_method=hill_method, hill_variant=\"paper\", min_eigs=min_eigs,", "adamw"),
    Mutant("adamw-ignores-min_eigs", ADAMW, "            hill_method=hill_method, hill_variant=hill_variant, min_eigs=min_eigs,",
           "            hill_method=hill_method, hill_variant=hill_variant, min_eigs=50,", "adamw"),
    Mutant("adamw-state-ignores-state_dtype", FUSED, "sdt = default_state_dtype(self.state_dtype, p.dtype)",
           "sdt = default_state_dtype(None, p.dtype)", "adamw"),
    Mutant("state-dtype-rule-ignores-the-argument", PARAMS,
           "return state_dtype or (torch.float64 if param_dtype == torch.float64 else torch.float32)",
           "return torch.float64 if param_dtype == torch.float64 else torch.float32", "adamw"),
    Mutant("adamw-lr-without-multiplier", FUSED, "per_layer(group_lr, launch.group_index, launch.multipliers, launch.layer_index)",
           "group_lr[launch.group_index]", "adamw"),
    Mutant("adamw-group-wd-of-group-0", FUSED, "per_layer(group_wd, launch.group_index,",
           "per_layer(group_wd, launch.group_index * 0,", "adamw"),
    Mutant("per-layer-value-of-layer-0", PARAMS, "return group_values[group_index] * multipliers[layer_index]",
           "return group_values[group_index] * multipliers[0]", "optim"),
    # ----- LLRMuon's arguments ----------------------------------------------------------------------
    Mutant("muon-ignores-lr", MUON, "            lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,",
           "            lr=1e-2, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,", "optim"),
    Mutant("muon-ignores-weight_decay", MUON, "            lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,",
           "            lr=lr, weight_decay=0.1, momentum=momentum, nesterov=nesterov,", "optim"),
    Mutant("muon-ignores-momentum", MUON, "            lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,",
           "            lr=lr, weight_decay=weight_decay, momentum=0.95, nesterov=nesterov,", "optim"),
    Mutant("muon-ignores-nesterov", MUON, "            lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,",
           "            lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=True,", "optim"),
    Mutant("muon-ignores-ns_coefficients", MUON, "ns_coefficients=ns_coefficients, ns_steps=ns_steps,", "ns_coefficients=\"quintic\", ns_steps=ns_steps,", "optim"),
    Mutant("muon-ignores-ns_steps", MUON, "ns_coefficients=ns_coefficients, ns_steps=ns_steps,", "ns_coefficients=ns_coefficients, ns_steps=5,", "optim"),
    Mutant("muon-ignores-ns_eps", MUON, "ns_eps=ns_eps, adjust_lr_fn=adjust_lr_fn,", "ns_eps=1e-7, adjust_lr_fn=adjust_lr_fn,", "optim"),
    Mutant("muon-ignores-adjust_lr_fn", MUON, "ns_eps=ns_eps, adjust_lr_fn=adjust_lr_fn,", "ns_eps=ns_eps, adjust_lr_fn=\"original\",", "optim"),
    Mutant("muon-ignores-adamw_betas", MUON, "betas=tuple(adamw_betas), eps=adamw_eps,", "betas=(0.9, 0.999), eps=adamw_eps,", "optim"),
    Mutant("muon-ignores-adamw_eps", MUON, "betas=tuple(adamw_betas), eps=adamw_eps,", "betas=tuple(adamw_betas), eps=1e-8,", "optim"),
    Mutant("muon-ignores-amsgrad", MUON, "eps=adamw_eps, amsgrad=amsgrad, maximize=maximize,", "eps=adamw_eps, amsgrad=False, maximize=maximize,", "optim"),
    Mutant("muon-ignores-maximize", MUON, "eps=adamw_eps, amsgrad=amsgrad, maximize=maximize,", "eps=adamw_eps, amsgrad=amsgrad, maximize=False,", "optim"),
    Mutant("muon-step-ignores-maximize", MUON, "g = -p.grad if negate else p.grad", "g = p.grad", "optim"),
    Mutant("muon-ignores-adamw_lr", MUON, "_split_groups(params, model, classify, adamw_lr, adamw_weight_decay)",
           "_split_groups(params, model, classify, 1e-3, adamw_weight_decay)", "optim"),
    Mutant("muon-ignores-adamw_weight_decay", MUON, "_split_groups(params, model, classify, adamw_lr, adamw_weight_decay)",
           "_split_groups(params, model, classify, adamw_lr, weight_decay)", "optim"),
    Mutant("muon-adamw_weight_decay-default-zero", MUON, "            adamw_weight_decay = weight_decay\n", "            adamw_weight_decay = 0.0\n", "optim"),
    *_config_mutants("muon", MUON, "optim"),
    Mutant("muon-ignores-grad_alpha_source", MUON, "        self.grad_alpha_source = grad_alpha_source", "        self.grad_alpha_source = \"grad\"", "optim"),
    Mutant("muon-ignores-muon_backend", MUON, "        self.muon_backend = muon_backend", "        self.muon_backend = None", "optim"),
    Mutant("muon-ignores-max_grad_norm", MUON, "        self.max_grad_norm = max_grad_norm", "        self.max_grad_norm = None", "optim"),
    Mutant("muon-ignores-state_dtype", MUON, "sdt = default_state_dtype(self.state_dtype, dtype)",
           "sdt = default_state_dtype(None, dtype)", "optim"),
    Mutant("muon-ignores-ns_dtype", MUON, "        self.ns_dtype = ns_dtype", "        self.ns_dtype = torch.bfloat16", "optim"),
    Mutant("muon-ignores-backend", MUON, "groups, defaults, llr=config, model=model, classify=classify, backend=backend,",
           "groups, defaults, llr=config, model=model, classify=classify, backend=\"auto\",", "optim"),
    Mutant("muon-ignores-classify", MUON, "groups, defaults, llr=config, model=model, classify=classify, backend=backend,",
           "groups, defaults, llr=config, model=model, classify=None, backend=backend,", "optim"),
    Mutant("muon-ignores-hill_variant", MUON, "            hill_method=hill_method, hill_variant=hill_variant, min_eigs=min_eigs,",
           "            hill_method=hill_method, hill_variant=\"paper\", min_eigs=min_eigs,", "optim"),
    Mutant("muon-ignores-min_eigs", MUON, "            hill_method=hill_method, hill_variant=hill_variant, min_eigs=min_eigs,",
           "            hill_method=hill_method, hill_variant=hill_variant, min_eigs=50,", "optim"),
    Mutant("muon-lr-without-multiplier", MAPPLY, "lr = per_layer(group_lr, a.group_index, a.multipliers, a.layer_index)",
           "lr = group_lr[a.group_index]", "optim"),
    Mutant("muon-decay-without-multiplier", MAPPLY, "a.decays.copy_(1.0 - lr * per_layer(",
           "a.decays.copy_(1.0 - group_lr[a.group_index] * per_layer(", "optim"),
    Mutant("muon-step-without-shape-ratio", MAPPLY, "a.step_sizes.copy_(lr * a.ratio)", "a.step_sizes.copy_(lr * 1.0)", "optim"),
    Mutant("muon-clip-ignored", MUON, "self.last_grad_norm = clip_all_grads(self._clip_params, self.max_grad_norm)",
           "self.last_grad_norm = torch.zeros(())", "optim"),
    # ----- shared LLR logic (base) --------------------------------------------------------------------
    Mutant("base-ignores-hill_method", BASE, "self.hill_method, self.hill_variant, self.min_eigs = hill_method, hill_variant, min_eigs",
           "self.hill_method, self.hill_variant, self.min_eigs = \"exact\", hill_variant, min_eigs", "optim"),
    Mutant("base-pin-embedding-ignored", LLR, "(l.kind == \"embedding\" and config.pin_embedding)", "(l.kind == \"embedding\" and False)", "optim"),
    Mutant("base-pin-lm-head-always", LLR, "(l.kind == \"lm_head\" and config.pin_lm_head)", "(l.kind == \"lm_head\")", "optim"),
    Mutant("base-measures-after-the-step", BASE, "mult = torch.stack([self.policy.multipliers(t), self.policy.wd_multipliers(t)]).to(torch.float64)",
           "mult = torch.stack([self.policy.start, self.policy.wd_multipliers(t)]).to(torch.float64)", "optim"),  # the update step keeps the old multipliers
    # ----- the LR map (Eq. 3), NaN handling -----------------------------------------------------------
    Mutant("map-direction-reversed", MAPS, "out[usable] = (u - u.min()) / span * (hi - lo) + lo",
           "out[usable] = (u.max() - u) / span * (hi - lo) + lo", "policy"),
    Mutant("map-range-to-s-plus-1", MAPS, "out[usable] = (u - u.min()) / span * (hi - lo) + lo",
           "out[usable] = (u - u.min()) / span * hi + lo", "policy"),  # Eq. 3 (lo = 1, hi = s) into [1, s + 1]
    Mutant("map-pinned-at-1", MAPS, "    out[pin] = hi\n", "    out[pin] = 1.0\n", "policy"),
    Mutant("map-nan-resets-to-1", MAPS,
           "out = torch.ones_like(x) if previous is None else previous.detach().to(torch.float64).cpu().clone()",
           "out = torch.ones_like(x)", "policy"),
    Mutant("map-inf-sets-the-range", MAPS, "usable = torch.isfinite(x) & ~pin", "usable = ~torch.isnan(x) & ~pin", "policy"),
    Mutant("map-degenerate-gives-s", MAPS, "            out[usable] = 1.0\n", "            out[usable] = hi\n", "policy"),
    Mutant("map-previous-ignored", LLR, "target = llr_multipliers(mapped, c.s, pinned=self.pinned, previous=self.target)",
           "target = llr_multipliers(mapped, c.s, pinned=self.pinned, previous=None)", "policy"),
    # ----- the schedule (Algorithm 1): phases, freeze, ramp --------------------------------------------
    Mutant("phase-grad-boundary", LLR, "return \"grad\" if t / c.total_steps <= c.grad_phase else \"weight\"",
           "return \"grad\" if t / c.total_steps < c.grad_phase else \"weight\"", "policy"),
    Mutant("phase-grad-when-zero", LLR, "if c.total_steps is None or c.grad_phase <= 0.0:", "if c.total_steps is None or c.grad_phase < 0.0:", "policy"),
    Mutant("phase-always-weight", LLR, "return \"grad\" if t / c.total_steps <= c.grad_phase else \"weight\"", "return \"weight\"", "policy"),
    Mutant("freeze-boundary", LLR, "t >= c.active_until * c.total_steps", "t > c.active_until * c.total_steps", "policy"),
    Mutant("freeze-never", LLR, "return t % self.config.interval == 0 and not self.frozen(t)", "return t % self.config.interval == 0", "policy"),
    Mutant("interval-off-by-one", LLR, "return t % self.config.interval == 0 and not self.frozen(t)",
           "return (t + 1) % self.config.interval == 0 and not self.frozen(t)", "policy"),
    Mutant("ramp-off-by-one", PBASE, "frac = min(1.0, (t - self.last_update + 1) / r)", "frac = min(1.0, (t - self.last_update) / r)", "policy"),
    Mutant("ramp-starts-from-old-target", PBASE, "        self.start = self.multipliers(t)\n", "        self.start = self.target.clone()\n", "policy"),
    # ----- state_dict restore of every LLR field ----------------------------------------------------------
    Mutant("load-drops-alphas", PBASE, "self.alphas = state[\"alphas\"].to(torch.float64).clone()", "self.alphas = self.alphas", "state"),
    Mutant("load-drops-target", PBASE, "self.target = state[\"target\"].to(torch.float64).clone()", "self.target = self.target", "state"),
    Mutant("load-drops-ramp-start", PBASE, "self.start = state[\"start\"].to(torch.float64).clone()", "self.start = self.start", "state"),
    Mutant("load-drops-last-update", PBASE, "self.last_update = state[\"last_update\"]", "self.last_update = self.last_update", "state"),
    Mutant("load-drops-last-source", PBASE, "self.last_source = state[\"last_source\"]", "self.last_source = self.last_source", "state"),
    Mutant("load-drops-num-updates", PBASE, "self.num_updates = state[\"num_updates\"]", "self.num_updates = self.num_updates", "state"),
    Mutant("load-drops-step", BASE, "self.llr_step = int(llr[\"step\"])", "self.llr_step = 0", "state"),
    Mutant("load-drops-hill-status", BASE, "self.layer_status = list(llr.get(\"hill_status\") or [STATUS_NOT_MEASURED] * len(self.layers))",
           "self.layer_status = self.layer_status", "state"),
    Mutant("load-drops-update-seconds", BASE, "self.llr_update_seconds = float(llr.get(\"update_seconds\", 0.0))", "self.llr_update_seconds = 0.0", "state"),
    Mutant("load-drops-policy", BASE, "        self.policy.load_state_dict(llr[\"policy\"])\n", "", "state"),
    Mutant("load-casts-state-to-param-dtype", BASE, "        self._restore_state_dtypes(state, params_of)\n", "", "state"),
    Mutant("load-skips-rebuild-hook", BASE, "        self._on_state_loaded()\n", "", "state"),
    # ----- the Hill estimator's indices (Eq. 2) -----------------------------------------------------------
    Mutant("hill-k-rounds-up", HILL, "        k = n // 2\n", "        k = (n + 1) // 2\n", "hill"),
    Mutant("hill-threshold-index", HILL, PAPER, "        return n - k, n - k, k, (n - k - 0.5) / n", "hill"),
    Mutant("hill-tail-start", HILL, PAPER, "        return n - k - 1, n - k + 1, k, (n - k - 0.5) / n", "hill"),
    Mutant("hill-numerator", HILL, PAPER, "        return n - k - 1, n - k, k + 1, (n - k - 0.5) / n", "hill"),
    Mutant("hill-reference-threshold", HILL, REFERENCE, "    return i - 1, i, n - i, (i + 0.5) / n", "hill"),
    Mutant("hill-reference-tail", HILL, REFERENCE, "    return i, i - 1, n - i, (i + 0.5) / n", "hill"),
    Mutant("hill-reference-count", HILL, REFERENCE, "    return i, i, n - i - 1, (i + 0.5) / n", "hill"),
    # ----- AdamW kernels: torch reference, Triton, C++ ------------------------------------------------------
    Mutant("adamw-torch-lr-of-tensor-0", "llr_kernels/ops/adamw/naive.py", "lr, wd, step = lr_list[i], wd_list[i], step_list[i]",
           "lr, wd, step = lr_list[0], wd_list[i], step_list[i]", "adamw_kernel"),
    Mutant("adamw-torch-bias-correction", "llr_kernels/ops/adamw/naive.py", "bias_correction1 = 1 - beta1**step", "bias_correction1 = 1 - beta1**(step + 1)", "adamw_kernel"),
    Mutant("adamw-torch-amsgrad-max", "llr_kernels/ops/adamw/naive.py", "torch.maximum(vmax32, v32, out=vmax32)\n            denom = (vmax32",
           "torch.minimum(vmax32, v32, out=vmax32)\n            denom = (vmax32", "adamw_kernel"),
    Mutant("step-tick-never-schedules-host-work", BASE,
           "if self._policy.is_update_step(self._llr_step) or self._policy.ramping(self._llr_step):", "if False:", "capturable"),
    Mutant("compiled-step-bakes-the-lr", BASE, "return torch.stack([one * v for v in vals]), None",
           "return torch.stack([one * 1e-3 for v in vals]), None", "capturable"),
    Mutant("op-schema-hides-step-mutation", "llr_kernels/ops/custom_ops.py", "Tensor weight_decays, Tensor(e!) steps",
           "Tensor weight_decays, Tensor steps", "capturable"),
    Mutant("adamw-torch-capturable-amsgrad-max", "llr_kernels/ops/adamw/naive.py", "torch.maximum(vmax32, v32, out=vmax32)\n        vh",
           "torch.minimum(vmax32, v32, out=vmax32)\n        vh", "capturable"),
    Mutant("adamw-triton-lr-by-row", "llr_kernels/ops/adamw/triton.py", "lr = tl.load(lr_ptr + gidx)", "lr = tl.load(lr_ptr + t)", "adamw_kernel"),
    Mutant("adamw-triton-wd-by-row", "llr_kernels/ops/adamw/triton.py", "wd = tl.load(wd_ptr + gidx)", "wd = tl.load(wd_ptr + t)", "adamw_kernel"),
    Mutant("adamw-triton-step-counter", "llr_kernels/ops/adamw/triton.py", "step = tl.load(step_ptr + gidx) + 1.0", "step = tl.load(step_ptr + gidx) + 2.0", "adamw_kernel"),
    Mutant("adamw-triton-v-update", "llr_kernels/ops/adamw/triton.py", "v = v * beta2 + w2 * g * g", "v = v * beta2 + w2 * g", "adamw_kernel"),
    Mutant("adamw-triton-amsgrad-max", "llr_kernels/ops/adamw/triton.py", "vh = tl.maximum(vmax, v)", "vh = tl.minimum(vmax, v)", "adamw_kernel"),
    Mutant("adamw-cpp-lr-of-tensor-0", "llr_kernels/csrc/adamw_cpu.cpp", "const double lr = lr_p[t], wd = wd_p[t], step = step_p[t];",
           "const double lr = lr_p[0], wd = wd_p[t], step = step_p[t];", "adamw_kernel", ext="rebuild"),
    Mutant("adamw-cpp-step-counter", "llr_kernels/csrc/adamw_cpu.cpp", "step_p[t] += 1.0f;", "step_p[t] += 2.0f;", "adamw_kernel", ext="rebuild"),
    # ----- Muon kernels -------------------------------------------------------------------------------
    Mutant("muon-triton-apply-local-index", "llr_kernels/ops/muon/triton.py", "    idx = tl.load(row + 2)\n", "    idx = t\n", "muon_kernel"),
    Mutant("muon-triton-apply-table-without-index", "llr_kernels/ops/muon/triton.py", "work, meta = _tables(\"apply\", cols, idx, device)",
           "work, meta = _tables(\"apply\", cols, list(range(len(idx))), device)", "muon_kernel"),
    Mutant("muon-triton-momentum-weight", "llr_kernels/ops/muon/triton.py", "m = _lerp(m, g, one_minus_mu)", "m = _lerp(m, g, mu)", "muon_kernel"),
    Mutant("muon-triton-nesterov-order", "llr_kernels/ops/muon/triton.py", "u = _lerp(g, u, mu)", "u = _lerp(u, g, mu)", "muon_kernel"),
    Mutant("muon-torch-momentum-weight", "llr_kernels/ops/muon/naive.py", "        buf.lerp_(g_b, 1 - momentum)\n", "        buf.lerp_(g_b, momentum)\n", "muon_kernel"),
    Mutant("muon-torch-apply-sign", "llr_kernels/ops/muon/naive.py", "p32.add_(u, alpha=-s)", "p32.add_(u, alpha=s)", "muon_kernel"),
    # ----- robust LLR (issue 12): the outlier rule, its place in the update, per-cause warnings ------------------
    Mutant("robust-no-min-scale", LLR, "scale = max(1.4826 * float(mad), min_scale)", "scale = max(1.4826 * float(mad), 0.0)", "robust"),
    Mutant("robust-mad-unscaled", LLR, "scale = max(1.4826 * float(mad), min_scale)", "scale = max(float(mad), min_scale)", "robust"),
    Mutant("robust-no-log-transform", LLR, "    x = torch.log(a[ok] - 1.0)\n", "    x = a[ok]\n", "robust"),
    Mutant("robust-min-layers-3", LLR, "if int(ok.sum()) < OUTLIER_MIN_LAYERS:", "if int(ok.sum()) < 3:", "robust"),
    Mutant("robust-pinned-in-statistic", LLR, "ok = usable.cpu().bool() & torch.isfinite(a) & (a > 1.0)",
           "ok = torch.isfinite(a) & (a > 1.0)", "robust"),
    Mutant("policy-outliers-set-the-range", LLR,
           "mapped = torch.where(outliers, torch.full_like(values, float(\"nan\")), values)",
           "mapped = values", "robust"),
    Mutant("policy-outliers-reset-to-1", LLR, "        if c.shuffle:\n",
           "        target[outliers] = 1.0\n        if c.shuffle:\n", "robust"),
    Mutant("policy-outlier_z-none-ignored", LLR,
           "        if c.outlier_z is not None and c.metric == \"alpha\":\n            outliers = robust_outliers(values, ~self.pinned, c.outlier_z)\n",
           "        if c.metric == \"alpha\":\n            outliers = robust_outliers(values, ~self.pinned, c.outlier_z or OUTLIER_Z)\n", "robust"),
    Mutant("policy-outlier_z-value-ignored", LLR, "robust_outliers(values, ~self.pinned, c.outlier_z)",
           "robust_outliers(values, ~self.pinned)", "robust"),
    Mutant("load-drops-outliers", PBASE,
           "self.outliers = torch.zeros(self.num_layers, dtype=torch.bool) if outliers is None else outliers.cpu().bool().clone()",
           "self.outliers = torch.zeros(self.num_layers, dtype=torch.bool)", "state"),
    Mutant("base-outlier-status-not-reported", UPDATE, "        status[i] = STATUS_OUTLIER\n", "        status[i] = status[i]\n", "robust"),
    Mutant("base-warns-every-update", UPDATE, "        if cause in warned:\n", "        if False:\n", "robust"),
    Mutant("base-warns-for-pinned-layers", UPDATE, "if st in STATUS_EXPLANATIONS and not bool(opt.policy.pinned[i]):",
           "if st in STATUS_EXPLANATIONS:", "robust"),
    Mutant("base-sparse-embedding-accepted", BASE, "        reject_sparse_embeddings(model, self._layer_index)\n", "", "robust"),
    Mutant("base-momentum-source-ignores-exp_avg", BASE, "buf = st.get(\"momentum_buffer\", st.get(\"exp_avg\"))",
           "buf = st.get(\"momentum_buffer\")", "optim"),
    Mutant("base-momentum-source-reads-grad", BASE, "if getattr(self, \"grad_alpha_source\", \"grad\") == \"momentum\":",
           "if False:", "optim"),
    # ----- transposed (Hugging Face Conv1D) weights: Muon's shape factor from the logical shape --------------
    Mutant("layers-logical-shape-ignores-transposed", "llr_kernels/layers.py",
           "return (shape[1], shape[0], *shape[2:]) if self.transposed and len(shape) >= 2 else shape", "return shape", "robust"),
    Mutant("muon-shape-factor-of-stored-shape", MAPPLY, "ratios = [adjust_lr_ratio(opt.param_groups[gi][\"adjust_lr_fn\"], layer.logical_shape)",
           "ratios = [adjust_lr_ratio(opt.param_groups[gi][\"adjust_lr_fn\"], layer.shape)", "robust"),
    Mutant("muon-stats-shape-factor-of-stored-shape", MUON, "adjust_lr_ratio(g[\"adjust_lr_fn\"], layer.logical_shape)",
           "adjust_lr_ratio(g[\"adjust_lr_fn\"], layer.shape)", "robust"),
    # ----- the Hill estimator: rank-aware k, noise level of the input's precision --------------------------
    Mutant("hill-rank-deficient-status-ok", HREF, "        ok = STATUS_OK_RANK_DEFICIENT\n", "        ok = STATUS_OK\n", "hill_rank"),
    Mutant("hill-rank-deficient-always-nan", HREF, "        if rank_deficient == \"nan\":\n", "        if True:\n", "hill_rank"),
    Mutant("hill-rank-deficient-no-min-rank", HREF, "        if r < max(2, min_eigs):\n", "        if r < 2:\n", "hill_rank"),
    Mutant("hill-noise-of-compute-dtype", HILL, "    u_in = unit_roundoff(input_dtype)\n", "    u_in = unit_roundoff(compute)\n", "hill_rank"),
    # ----- checkpoints: wrapper levels, torch.optim.AdamW checkpoints --------------------------------------
    Mutant("ckpt-keeps-leading-module", "llr_kernels/optim/wrappers.py",
           "if part in WRAPPER_LEVELS or (not out and part in LEADING_LEVELS):", "if part in WRAPPER_LEVELS:", "ckpt"),
    Mutant("ckpt-drops-inner-module", "llr_kernels/optim/wrappers.py",
           "if part in WRAPPER_LEVELS or (not out and part in LEADING_LEVELS):", "if part in WRAPPER_LEVELS or part in LEADING_LEVELS:", "ckpt"),
    Mutant("ckpt-keeps-fsdp-level", "llr_kernels/optim/wrappers.py",
           "WRAPPER_LEVELS = (\"_orig_mod\", \"_fsdp_wrapped_module\", \"_checkpoint_wrapped_module\")",
           "WRAPPER_LEVELS = (\"_orig_mod\", \"_checkpoint_wrapped_module\")", "ckpt"),
    Mutant("ckpt-old-format-names-not-normalised", "llr_kernels/optim/checkpoint.py", "theirs = [normalize_name(n) for n in names]",
           "theirs = list(names)", "ckpt"),
    Mutant("ckpt-shapes-not-checked", "llr_kernels/optim/checkpoint.py",
           "if shapes is not None and tuple(shapes[i]) != tuple(layers[i].shape):", "if False:", "ckpt"),
    Mutant("torch-load-drops-exp_avg", ADAMW,
           "\"exp_avg\": st[\"exp_avg\"].to(device=p.device, dtype=sdt, copy=True),", "\"exp_avg\": torch.zeros_like(p, dtype=sdt),", "ckpt"),
    Mutant("torch-load-llr-step-zero", ADAMW, "opt.reset_llr(max(steps) if llr_step is None else int(llr_step))",
           "opt.reset_llr(0 if llr_step is None else int(llr_step))", "ckpt"),
    Mutant("torch-load-drops-group-hyperparameters", ADAMW,
           "m = {**g, **{k: v for k, v in gs.items() if k not in _TORCH_IMPL_KEYS and (k in g or k == \"initial_lr\")}}",
           "m = dict(g)", "ckpt"),
    # ----- add_param_group: new layers classified, pinned and split like the constructor's ---------------------
    Mutant("add-group-ignores-model", BASE, "layers = classify_named(named, model, self._classify)",
           "layers = classify_named(named, None, self._classify)", "add_group"),
    Mutant("add-group-never-pinned", BASE, "self.policy.add_layers(self.policy.pins(layers), layers)",
           "self.policy.add_layers(torch.zeros(len(layers), dtype=torch.bool), layers)", "add_group"),
    Mutant("add-group-muon-takes-every-layer", MUON, "        eligible = {id(l.param) for l in layers if muon_eligible(l)}\n        return _split_group(",
           "        eligible = {id(l.param) for l in layers}\n        return _split_group(", "add_group"),
    Mutant("add-group-rollback-keeps-policy", BASE, "            self.policy = policy\n", "            pass\n", "add_group"),
    # ----- layerwise policies (issue 11): weight-decay multipliers, AlphaDecay, controls, RLRS, blocks, maps, state --
    Mutant("adamw-wd-without-multiplier", FUSED, "per_layer(group_wd, launch.group_index, launch.wd_multipliers, launch.layer_index)",
           "group_wd[launch.group_index]", "policies"),
    Mutant("muon-decay-without-wd-multiplier", MAPPLY, "per_layer(group_wd, a.group_index, a.wd_multipliers, a.layer_index)",
           "group_wd[a.group_index]", "policies"),
    Mutant("muon-split-momentum-of-the-default", "llr_kernels/optim/muon_split.py",
           "muon_momentum([grad.contiguous()], [buf], [u], float(g[\"momentum\"]),", "muon_momentum([grad.contiguous()], [buf], [u], 0.9,", "dist"),
    Mutant("wd-ramp-start-not-updated", PBASE, "        self.wd_start = self.wd_multipliers(t)\n", "", "policies"),
    Mutant("alphadecay-wd-from-grad-phase", LLR, "if c.wd_range is not None and source == \"weight\":",
           "if c.wd_range is not None:", "policies"),
    Mutant("alphadecay-includes-embedding-head", LLR,
           "hidden = torch.tensor([k not in (\"embedding\", \"lm_head\") for k in self.kinds]) & ~self.pinned",
           "hidden = torch.ones(len(self.kinds), dtype=torch.bool)", "policies"),
    Mutant("alphadecay-wd-range-reversed", LLR, "float(c.wd_range[0]), float(c.wd_range[1]), previous=self.wd_target)",
           "float(c.wd_range[1]), float(c.wd_range[0]), previous=self.wd_target)", "policies"),
    Mutant("llr-ignores-s_min", LLR, "target = map_values(mapped, c.s_min, c.s, kind=c.map,",
           "target = map_values(mapped, 1.0, c.s, kind=c.map,", "policies"),
    Mutant("shuffle-never-applied", LLR, "            target = self._shuffled(target, mapped)\n", "            pass\n", "policies"),
    Mutant("bias-does-not-follow-matrix", LLR, "                target[i] = target[j]\n", "                target[i] = target[i]\n",
           "policies"),
    Mutant("uniform-ignores-scale", FIXED, "torch.full((count,), float(self.config.scale), dtype=torch.float64)",
           "torch.full((count,), 1.0, dtype=torch.float64)", "policies"),
    Mutant("blockwise-ignores-default", FIXED, "float(c.ratios.get(b, c.default))", "float(c.ratios.get(b, 1.0))", "policies"),
    Mutant("rlrs-paper-curve-linear", RLRS, "        return (f * z + (a - f * z) * w) / (f + (1.0 - f) * w)\n",
           "        return a + (z - a) * u\n", "policies"),
    Mutant("rlrs-start-end-swapped", RLRS,
           "return torch.tensor(a, dtype=torch.float64), torch.tensor(z, dtype=torch.float64)",
           "return torch.tensor(z, dtype=torch.float64), torch.tensor(a, dtype=torch.float64)", "policies"),
    Mutant("rlrs-multipliers-never-reach-the-device", RLRS,
           "return bool((a != z).any()) and 0 < t <= self.config.total_steps", "return False", "policies"),
    Mutant("blockwise-bias-own-block", BLOCKS, "                blocks[i] = blocks[j]\n", "                pass\n", "policies"),
    Mutant("blocks-qk-vo-swapped", BLOCKS,
           "    if kind in (\"attn_q\", \"attn_k\"):\n        return \"qk\"\n    if kind in (\"attn_v\", \"attn_o\"):\n        return \"vo\"\n",
           "    if kind in (\"attn_q\", \"attn_k\"):\n        return \"vo\"\n    if kind in (\"attn_v\", \"attn_o\"):\n        return \"qk\"\n",
           "policies"),
    Mutant("map-step-denominator-m-minus-1", MAPS, "out[usable] = lo + (hi - lo) * rank / u.numel()",
           "out[usable] = lo + (hi - lo) * rank / (u.numel() - 1)", "policies"),
    Mutant("map-sqrt-log2-not-mean-normalised", MAPS, "out[usable] = f / f.sum() * u.numel()", "out[usable] = f / f.sum()",
           "policies"),
    Mutant("dcp-entry-drops-wd_target", "llr_kernels/optim/checkpoint.py", "            \"wd_target\": p.wd_target[i].clone(),\n", "",
           "policies"),
    Mutant("load-skips-policy-name-check", PBASE, "        if saved != self.name:\n", "        if False:\n", "policies"),
    # ----- non-contiguous parameters in the step ops -----------------------------------------------------------
    Mutant("noncontig-gaps-count-as-dense", "llr_kernels/ops/custom_ops.py", "        if stride != expected:\n",
           "        if stride < expected:\n", "noncontig", ext="on"),
    Mutant("noncontig-mixed-layouts-flattened", "llr_kernels/ops/custom_ops.py",
           "if _dense(row[0]) and all(_layout(t) == layout for t in row[1:]):", "if _dense(row[0]):", "noncontig", ext="on"),
    Mutant("noncontig-torch-rows-unclipped", "llr_kernels/ops/custom_ops.py",
           "lrs[i:i + 1], weight_decays[i:i + 1], steps[i:i + 1], inv_scale=scale,",
           "lrs[i:i + 1], weight_decays[i:i + 1], steps[i:i + 1], inv_scale=inv_scale,", "noncontig", ext="on"),
    Mutant("noncontig-muon-rows-step-of-row-0", "llr_kernels/ops/custom_ops.py",
           "muon_apply_torch([params[i]], [updates[i]], decays[i:i + 1], step_sizes[i:i + 1], capturable=capturable)",
           "muon_apply_torch([params[i]], [updates[i]], decays[0:1], step_sizes[0:1], capturable=capturable)", "noncontig", ext="on"),
    # ----- LAMB / LARS (optim/trust_ratio.py): the ratios and whole-tensor norms of sharded parameters ----------
    Mutant("trust-loop-norm-of-local-shard", TRUST, "    return float(full(torch.linalg.vector_norm(t, 2, dtype=_norm_dtype(t.dtype))))",
           "    return float(torch.linalg.vector_norm(t.to_local() if is_dtensor(t) else t, 2, dtype=_norm_dtype(t.dtype)))",
           "trust"),
    Mutant("trust-batched-norms-of-local-shards", TRUST, "zip(ids, full(torch.stack(norms)).to(",
           "zip(ids, torch.stack([x.to_local() if is_dtensor(x) else x for x in norms]).to(", "trust"),
    Mutant("lamb-clamp-ignored", TRUST, "    phi = w_norm if clamp is None else min(max(w_norm, clamp[0]), clamp[1])",
           "    phi = w_norm", "trust"),
    Mutant("lars-ratio-drops-weight-decay", TRUST, "    return coefficient * w_norm / (g_norm + wd * w_norm + eps)",
           "    return coefficient * w_norm / (g_norm + eps)", "trust"),
    # ----- target_error: the steps term of SLQ's bound (spectral/target.py, slq.py) -----------------------------------------
    Mutant("target-bound-without-steps-term", TARGET,
           "tgt.err[i] = slq_error_bound(a, n_eff, p, float(call.stderr[i]), float(tgt.steps_err[i]))",
           "tgt.err[i] = slq_error_bound(a, n_eff, p, float(call.stderr[i]))", "target"),
    Mutant("target-half-rule-uses-all-steps", SLQ, "            sh = max(2, s // 2)\n", "            sh = s\n", "target"),
    Mutant("target-exact-keeps-steps-term", BATCHED, "                tgt.steps_err[i] = 0.0\n", "", "target"),
    # ----- issue 21: policy options and their combinations (tests/policies/test_policy_options.py) ----------------
    Mutant("i21-rlrs-cosine-curve-reversed", RLRS, "            return z + (a - z) * w\n", "            return a + (z - a) * w\n", "options"),
    Mutant("i21-rlrs-fraction-off-by-one", RLRS, "u = min(1.0, max(0.0, t / c.total_steps))",
           "u = min(1.0, max(0.0, (t + 1) / c.total_steps))", "options"),
    Mutant("i21-rlrs-start-only-from-start-table", RLRS, "a = [float(c.start.get(b, c.end.get(b, 1.0))) for b in blocks]",
           "a = [float(c.start.get(b, 1.0)) for b in blocks]", "options"),
    Mutant("i21-rlrs-end-only-from-end-table", RLRS, "z = [float(c.end.get(b, c.start.get(b, 1.0))) for b in blocks]",
           "z = [float(c.end.get(b, 1.0)) for b in blocks]", "options"),
    Mutant("i21-rlrs-ignores-final_lr_ratio", RLRS, "f = c.final_lr_ratio", "f = 0.1", "options"),
    Mutant("i21-rlrs-last-step-not-refreshed", RLRS, "0 < t <= self.config.total_steps", "0 < t < self.config.total_steps", "options"),
    Mutant("i21-shuffle-same-draw-every-update", LLR, "manual_seed(int(self.config.seed) * 1_000_003 + self.num_updates)",
           "manual_seed(int(self.config.seed) * 1_000_003)", "options"),
    Mutant("i21-shuffle-ignores-seed", LLR, "manual_seed(int(self.config.seed) * 1_000_003 + self.num_updates)",
           "manual_seed(self.num_updates)", "options"),
    Mutant("i21-shuffle-deals-pinned-layers", LLR, "usable = torch.nonzero(torch.isfinite(mapped) & ~self.pinned).flatten()",
           "usable = torch.nonzero(torch.isfinite(mapped)).flatten()", "options"),
    Mutant("i21-bias-wd-does-not-follow-matrix", LLR, "                    wd[i] = wd[j]\n", "                    wd[i] = wd[i]\n", "options"),
    Mutant("i21-wd-ramp-from-lr-start", PBASE, "return self._ramp(self.wd_start, self.wd_target, t)",
           "return self._ramp(self.start, self.wd_target, t)", "options"),
    Mutant("i21-grad_norm-phase-follows-schedule", LLR, "        if c.metric == \"grad_norm\":\n            return \"grad\"\n", "", "options"),
    Mutant("i21-outlier-rule-for-every-metric", LLR, "if c.outlier_z is not None and c.metric == \"alpha\":",
           "if c.outlier_z is not None:", "options"),
    Mutant("i21-map-step-rank-reversed", MAPS, "rank = torch.argsort(torch.argsort(u)).to(torch.float64)",
           "rank = torch.argsort(torch.argsort(-u)).to(torch.float64)", "options"),
    Mutant("i21-map-sigmoid-unscaled", MAPS, "z = (u - u.mean()) / (u.std(unbiased=False) + 1e-8)", "z = u - u.mean()", "options"),
    Mutant("i21-map-sigmoid-sample-std", MAPS, "z = (u - u.mean()) / (u.std(unbiased=False) + 1e-8)",
           "z = (u - u.mean()) / (u.std() + 1e-8)", "options"),
    Mutant("i21-blocks-bias-without-weight-is-norm", BLOCKS, "return \"bias\" if lname.endswith(\"bias\") else \"norm\"",
           "return \"norm\"", "options"),
    Mutant("i21-added-layers-take-first-layers-targets", PBASE, "init = self.initial_targets(self.num_layers, k)",
           "init = self.initial_targets(0, k)", "options"),
    # ----- issue 21: resume at every step (tests/optim/test_resume_every_step.py) ---------------------------------------
    Mutant("i21-load-drops-wd-target", PBASE, "self.wd_target = _ones(n) if wd_t is None else wd_t.to(torch.float64).clone()",
           "self.wd_target = _ones(n)", "resume"),
    Mutant("i21-load-drops-wd-start", PBASE, "self.wd_start = _ones(n) if wd_s is None else wd_s.to(torch.float64).clone()",
           "self.wd_start = _ones(n)", "resume"),
    Mutant("i21-dcp-wd-start-from-target", "llr_kernels/optim/checkpoint.py",
           "wd_target[i], wd_start[i] = float(e[\"wd_target\"]), float(e[\"wd_start\"])",
           "wd_target[i], wd_start[i] = float(e[\"wd_target\"]), float(e[\"wd_target\"])", "resume"),
    Mutant("i21-dcp-drops-last-source", "llr_kernels/optim/checkpoint.py", "\"last_source\": _SOURCES[int(first[\"last_source\"])] or None,",
           "\"last_source\": None,", "resume"),
    Mutant("i21-dcp-drops-statuses", "llr_kernels/optim/checkpoint.py",
           "status[i] = STATUS_CODES[code] if 0 <= code < len(STATUS_CODES) else STATUS_NOT_MEASURED",
           "status[i] = STATUS_NOT_MEASURED", "resume"),
    Mutant("i21-dcp-drops-outliers", "llr_kernels/optim/checkpoint.py", "outliers[i] = bool(int(e[\"outlier\"]))",
           "outliers[i] = False", "resume"),
    Mutant("i21-dcp-drops-update-seconds", "llr_kernels/optim/checkpoint.py",
           "        \"update_seconds\": float(first[\"update_seconds\"]),\n", "        \"update_seconds\": 0.0,\n", "resume"),
    Mutant("i21-dcp-drops-num-updates", "llr_kernels/optim/checkpoint.py", "\"num_updates\": int(first[\"num_updates\"]), \"outliers\": outliers}",
           "\"num_updates\": 0, \"outliers\": outliers}", "resume"),
    # ----- issue 21: split steps under the argument table (tests/distributed/test_dist_argument_table.py) ---------------
    Mutant("i21-split-nesterov-always", "llr_kernels/optim/muon_split.py", "float(g[\"momentum\"]), bool(g[\"nesterov\"]),",
           "float(g[\"momentum\"]), True,", "dist_table"),
    Mutant("i21-split-ignores-maximize", "llr_kernels/optim/muon_split.py", "            grad = -grad if g[\"maximize\"] else grad\n",
           "            grad = grad\n", "dist_table"),
    Mutant("i21-split-ns-eps-of-the-default", "llr_kernels/optim/muon_split.py", "steps, eps=eps,", "steps, eps=1e-7,", "dist_table"),
    Mutant("i21-split-statuses-shifted", "llr_kernels/optim/spectral_split.py", "return vals.cpu(), [STATUS_CODES[c - 1] if c > 0",
           "return vals.cpu(), [STATUS_CODES[min(c, len(STATUS_CODES) - 1)] if c > 0", "dist_table"),
    Mutant("i21-fused-clip-norm-in-float32", "llr_kernels/ops/adamw/naive.py",
           "dt = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32", "dt = torch.float32",
           "dist_table"),
    # ----- issue 21: deterministic spectral cases (tests/spectral/test_target_deterministic.py) --------------------------
    Mutant("i21-slq-cells-uncapped", "llr_kernels/ops/hill/naive.py",
           "h = torch.where(both, torch.minimum(0.25 * (left + right), torch.minimum(left, right)), 0.5 * (left + right))",
           "h = torch.where(both, 0.25 * (left + right), 0.5 * (left + right))", "spectral_det"),
    Mutant("i21-slq-rank-level-off-by-half", SLQ, "levels.append((n - rank + t + 0.5) / n)", "levels.append((n - rank + t) / n)",
           "spectral_det"),
    Mutant("i21-slq-rank-truncated", SLQ, "rank_of = {r: int(round(ns[r] * (1.0 - float(at_floor[r])))) for r in deficient}",
           "rank_of = {r: int(ns[r] * (1.0 - float(at_floor[r]))) for r in deficient}", "spectral_det"),
    Mutant("i21-steps-term-ignores-status-change", SLQ,
           "steps_err[row.index] = abs(a - ah) if st == sth and st in OK_STATUSES else float(\"inf\")",
           "steps_err[row.index] = abs(a - ah) if st in OK_STATUSES else float(\"inf\")", "spectral_det"),
    Mutant("i21-fits-min-rank-always", "llr_kernels/spectral/metrics.py", "if r < 2 or (r <= n // 2 and r < min_eigs):",
           "if r < max(2, min_eigs):", "spectral_det"),
    Mutant("i21-exact-failed-eig-is-non-finite", "llr_kernels/spectral/exact.py",
           "if err_c is not None and bool(torch.isfinite(call.mats[i]).all()):", "if False:", "spectral_det"),
    Mutant("i21-entropy-normalised-by-n", "llr_kernels/spectral/metrics.py",
           "return h / math.log(_RANK_ONE if rank <= 1 else rank)", "return h / math.log(_RANK_ONE if rank <= 1 else n)",
           "spectral_det"),
    # ----- issue 21: diagnostics (tests/optim/test_diagnostics.py) ------------------------------------------------------
    Mutant("i21-warning-shows-three-names", UPDATE,
           "shown = \", \".join(names[:4]) + (f\" and {len(names) - 4} more\" if len(names) > 4 else \"\")",
           "shown = \", \".join(names[:3]) + (f\" and {len(names) - 3} more\" if len(names) > 4 else \"\")", "diagnostics"),
    Mutant("i21-warning-source-always-weight", UPDATE, "format(source=source, min_eigs=opt.min_eigs)",
           "format(source=\"weight\", min_eigs=opt.min_eigs)", "diagnostics"),
    Mutant("i21-warning-min-eigs-of-the-default", UPDATE, "format(source=source, min_eigs=opt.min_eigs)",
           "format(source=source, min_eigs=50)", "diagnostics"),
    Mutant("i21-warning-counts-shown-names", UPDATE, "head = f\"LLR: {len(names)} layer(s) ({shown}): \"",
           "head = f\"LLR: {min(len(names), 4)} layer(s) ({shown}): \"", "diagnostics"),
    Mutant("i21-stats-weight-decay-with-lr-multiplier", BASE, "\"weight_decay\": float(per_layer(lr_wd, 1, wd_mult, i)),",
           "\"weight_decay\": float(per_layer(lr_wd, 1, mult, i)),", "diagnostics"),
    Mutant("i21-muon-stats-update-lr-without-shape-factor", MUON,
           "st[\"update_lr\"] = st[\"lr\"] * adjust_lr_ratio(g[\"adjust_lr_fn\"], layer.logical_shape) if muon else st[\"lr\"]",
           "st[\"update_lr\"] = st[\"lr\"]", "diagnostics"),
    # ----- issue 21: LAMB / LARS with bf16 / fp16 parameters (tests/optim/test_trust_ratio_precision.py) ----------------
    Mutant("i21-trust-norms-in-param-dtype", TRUST, "return torch.float32 if dtype in (torch.float16, torch.bfloat16) else None",
           "return None", "trust_lp"),
    Mutant("i21-trust-foreach-scalars-rounded", TRUST,
           "if any(t.device.type == \"cpu\" and t.dtype in (torch.bfloat16, torch.float16) and not is_dtensor(t) for t in tensors):",
           "if False:", "trust_lp"),
    Mutant("i21-lamb-eps-not-bias-corrected", TRUST, "return bc2_sqrt / (1.0 - b1**t), group[\"eps\"] * bc2_sqrt",
           "return bc2_sqrt / (1.0 - b1**t), group[\"eps\"]", "trust_lp"),
    Mutant("i21-lars-batched-nesterov-full-velocity", TRUST, "torch._foreach_add_(scaled, bufs, alpha=mom)",
           "torch._foreach_add_(scaled, bufs)", "trust_lp"),
    # ----- issue 21: harness command lines (tests/harness/test_harness_cli.py) -------------------------------------------
    Mutant("i21-cli-beta2-ignored", "python/train.py", "betas, wd = (a.beta1, a.beta2), a.weight_decay",
           "betas, wd = (a.beta1, 0.95), a.weight_decay", "cli"),
    Mutant("i21-cli-muon-s-ignored", "python/train.py", "adamw_betas=betas, weight_decay=wd,\n                           s=a.muon_s,",
           "adamw_betas=betas, weight_decay=wd,\n                           s=a.s,", "cli"),
    Mutant("i21-cli-rlrs-floor-ignored", "python/train.py", "total_steps=a.steps, final_lr_ratio=a.min_lr_ratio)",
           "total_steps=a.steps)", "cli"),
    Mutant("i21-cli-schedule-floor-ignored", "python/train.py", "warmup_cosine(t, a.steps, warm, a.min_lr_ratio)",
           "warmup_cosine(t, a.steps, warm)", "cli"),
    Mutant("i21-cli-clip-threshold-fixed", "python/train.py", "torch.nn.utils.clip_grad_norm_(params, a.clip)",
           "torch.nn.utils.clip_grad_norm_(params, 1.0)", "cli"),
    Mutant("i21-cli-arm-lr-scale-keeps-table", "python/train.py", "        out[name] = float(value)\n",
           "        out.setdefault(name, float(value))\n", "cli"),
    Mutant("i21-cli-eval-counts-from-zero", "python/train.py", "if done % a.eval_every == 0 or done == a.steps:",
           "if step % a.eval_every == 0 or done == a.steps:", "cli"),
    Mutant("i21-dist-cli-s-ignored", "python/train_dist.py", "adamw_betas=(0.9, 0.95), weight_decay=0.1, s=a.s or 2.0,",
           "adamw_betas=(0.9, 0.95), weight_decay=0.1, s=2.0,", "cli"),
    # MoE expert stacks (3-D parameters of modules that are no convolution)
    Mutant("moe-stack-measured-as-one-matrix", UPDATE,
           "if stacked is not None and any(stacked) and opt.policy.metric != \"grad_norm\":", "if False:", "moe"),
    Mutant("moe-stack-takes-its-first-expert", UPDATE,
           "return float(values[use].mean()), statuses[use[0]]", "return float(values[use[0]]), statuses[use[0]]", "moe"),
    Mutant("moe-unusable-experts-in-the-mean", UPDATE,
           "if st in OK_STATUSES]  # these", "if True]  # these", "moe"),
    Mutant("moe-3d-module-parameter-is-conv", "llr_kernels/layers.py",
           "param.dim() > 3 or (param.dim() == 3 and module is None)", "param.dim() > 2", "moe"),
    Mutant("moe-analysis-stack-one-row", "llr_kernels/analysis/run.py",
           "    return is_stack(r.kind, tuple(r.shape))", "    return False", "moe"),
    Mutant("moe-stack-cost-of-one-slice", "llr_kernels/optim/spectral_split.py",
           "return int(shape[0]) * measure_cost(tuple(shape[1:]))", "return measure_cost(tuple(shape[1:]))", "moe"),
]


def scratch_copy(dest: str) -> None:
    """Copy tracked and untracked (not ignored) files of the checkout; never the venv or caches."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = os.path.join(ROOT, rel)
        if not os.path.isfile(src):
            continue  # deleted in the work tree
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, rel))


def run_tests(scratch: str, tests: list[str], ext: str, timeout: float, ext_cache: str) -> tuple[str, float, str]:
    env = dict(os.environ, PYTHONPATH=scratch, TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "1"),
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("LLR_REQUIRE_ALL", None)
    if ext == "off":
        env["LLR_DISABLE_EXT"] = "1"
    elif ext == "rebuild":
        env.pop("LLR_DISABLE_EXT", None)
        env["LLR_KERNELS_CACHE"] = ext_cache
        env["LLR_REQUIRE_ALL"] = "1"  # a mutant that breaks the build must not pass by skipping the cpp tests
    else:
        env.pop("LLR_DISABLE_EXT", None)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.time() - start, ""
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    summary = tail[-1] if tail else ""
    failed = next((line for line in tail if line.startswith(("FAILED ", "ERROR "))), None)
    if failed is not None:  # which test caught it (or broke the baseline)
        summary += f"  [{failed[:160]}]"
    status = "survived" if proc.returncode == 0 else ("killed" if proc.returncode == 1 else f"error({proc.returncode})")
    return status, time.time() - start, summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", action="append", default=[], help="only mutants whose name contains this (repeatable)")
    ap.add_argument("--skip", action="append", default=[], help="leave out mutants whose name contains this (repeatable)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per mutant run (default 900)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the test groups used")
    args = ap.parse_args()
    mutants = [m for m in MUTANTS if (not args.k or any(k in m.name for k in args.k))
               and not any(k in m.name for k in args.skip)]
    if args.list:
        for m in mutants:
            print(f"{m.name:42s} {m.file:36s} {m.tests:13s} ext={m.ext}")
        return 0
    try:
        os.nice(10)
    except OSError:
        pass
    stale = []
    for m in mutants:
        with open(os.path.join(ROOT, m.file)) as fh:
            count = fh.read().count(m.old)
        if count != 1:
            stale.append((m, count))
    live = [m for m in mutants if m not in [s for s, _ in stale]]
    with tempfile.TemporaryDirectory(prefix="llr_mutation_") as tmp:
        scratch = os.path.join(tmp, "repo")
        ext_cache = os.path.join(tmp, "ext_cache")
        scratch_copy(scratch)
        probe = subprocess.run([sys.executable, "-c", "import llr_kernels; print(llr_kernels.__file__)"], cwd=scratch,
                               env=dict(os.environ, PYTHONPATH=scratch), capture_output=True, text=True, check=True)
        if not probe.stdout.strip().startswith(scratch):
            print(f"llr_kernels imports from {probe.stdout.strip()}, not the scratch copy; aborting", file=sys.stderr)
            return 2
        print(f"scratch copy: {scratch}; {len(live)} mutants, {len(stale)} stale", flush=True)
        if not args.no_baseline:
            groups = sorted({t for m in live for t in TESTS[m.tests]})
            status, secs, summary = run_tests(scratch, groups, "on", args.timeout * 2, ext_cache)
            print(f"baseline ({len(groups)} files): {status} in {secs:.0f}s  {summary}", flush=True)
            if status != "survived":
                print("the unmutated tests must pass first", file=sys.stderr)
                return 2
        results = []
        for m in live:
            path = os.path.join(scratch, m.file)
            with open(path) as fh:
                pristine = fh.read()
            with open(path, "w") as fh:
                fh.write(pristine.replace(m.old, m.new, 1))
            try:
                status, secs, summary = run_tests(scratch, TESTS[m.tests], m.ext, args.timeout, ext_cache)
            finally:
                with open(path, "w") as fh:
                    fh.write(pristine)
            results.append((m, status, secs))
            print(f"{status:10s} {secs:6.0f}s  {m.name:42s} {summary}", flush=True)
    killed = [r for r in results if r[1] != "survived"]
    print(f"\nkilled {len(killed)}/{len(results)} ({100 * len(killed) / max(1, len(results)):.0f}%)"
          + (f"; errors/timeouts count as killed: {sum(r[1] not in ('killed', 'survived') for r in results)}" if killed else ""))
    for m, status, _ in results:
        if status == "survived":
            print(f"SURVIVED: {m.name} ({m.file}: {m.old!r} -> {m.new!r})")
    for m, count in stale:
        print(f"STALE: {m.name} ({m.file}: snippet found {count} times)")
    return 0 if len(killed) == len(results) and not stale else 1


if __name__ == "__main__":
    sys.exit(main())

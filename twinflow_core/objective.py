"""The TwinFlow objective (one code path; flow matching and RCGM are settings of it).

Follows the official production step (inclusionAI/TwinFlow `src/methodes/twinflow/twinflow.py`), in short:

- path x_t = t*z + (1-t)*x (t=1 noise, t=0 data); the net predicts the velocity F(x_t, t, r) ~ z - x,
  an average velocity towards target time r: x_r ~ x_t - (t-r)*F. Predicted data: x_hat = x_t - |t|*F.
- each batch is partitioned into contiguous buckets by `probs` (e2e: t=1,r=0 / mul: r~t / any: r~U[0,t] /
  adv: the twin branch t=r=-s on the online model's own detached 1-step samples);
- one grad-carrying forward on the whole batch; every other call is under no_grad;
- non-adv rows: CFG-baked target (enhanced_ratio) then the RCGM N-th order target with gap delta and the
  +-1 residual clip; adv rows: plain flow matching on the fake samples (L_adv);
- tan time weighting, L2 or Barron (alpha=1) per-sample loss;
- L_rectify on e2e rows: sg(F - dv) with dv = clip(F(y,-s,-s) - F(y,s,s)) from the online model.

Settings (`ObjectiveConfig.preset`, entries of the objective registry twinflow_core/objectives/twinflow.py):
twinflow {1,1,1,1}; rcgm {1,1,1,0} without rectify (the official "RCGM in practice"); fm {mul} with
consistc_ratio = enhanced_ratio = estimate_order = 0.
Teachers (the EMA's decay d): CFG target from the EMA copy (0 < d < 1), the online net (d = 0) or the frozen
copy (d = 1); RCGM rollout from the EMA copy, else the online net (also when frozen); fake samples and dv always
from the online net. The CFG-baked target is v + w (f_c - f_u) in every mode; only `image_free` (official
use_image_free: all data replaced by the model's own 1-step samples) with a frozen teacher makes it the pure
teacher guidance f_u + w (f_c - f_u). tests/test_objective_reference.py checks all of this against an
independent transcription of the official step.

Deliberate differences from the official code, none of which change a loss value:
- the RCGM residual's small-gap branch is selected with `where` instead of multiplying by 1/(t-r), so t == r
  cannot give NaN (official issue #15);
- the CFG and RCGM teacher calls run only on the rows whose target they change (the official code runs them on
  the whole batch and discards the adv rows; the RCGM rollout also skips rows with t - r < delta, whose
  residual does not use it), and no CUDA RNG state is saved or restored (no dropout here);
- calls that share a network and a phase run as one forward of stacked rows: the CFG teacher's conditional and
  unconditional branch, and dv's fake (-s) and real (+s) branch on the same y (`_paired_call`; two calls when
  the conditionings cannot be stacked). Same values, up to float summation order in the batched kernels;
- a network that offers `encode_condition` (the in-house UNet) encodes captions once for the no-grad calls that
  share them: the teacher's CFG and RCGM calls when one network serves both (EMA or online teacher), and dv's two
  branches; same values, up to float summation order;
- rectify is skipped when its weight is 0 (the official code computes it and multiplies by 0);
- every no-grad call goes through the unwrapped module (`net.module` under DDP), so only the single
  grad-carrying forward passes through DDP's hooks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

import torch
from torch import nn

from twinflow_core.errors import ConfigError
from twinflow_core.objectives import get

BUCKETS = ("e2e", "mul", "any", "adv")


def config_from_dict(cls, values: dict, where: str):
    """A registered method's config dataclass `cls` from `values` over its defaults, validated; an unknown key
    is a ConfigError naming `where` and the known keys."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    cfg = replace(cls(), **values)
    cfg.validate()
    return cfg


@dataclass
class ObjectiveConfig:
    # batch partition weights, official `probs`
    probs: dict = field(default_factory=lambda: {"e2e": 1.0, "mul": 1.0, "any": 1.0, "adv": 1.0})
    estimate_order: int = 2  # N: teacher sub-steps in the RCGM rollout; 0 disables RCGM
    delta: float = 0.01  # RCGM gap
    consistc_ratio: float = 1.0  # r = t - U*cor*t; 0 forces r = t
    enhanced_ratio: float = 0.0  # w_e of the CFG-baked target; 0 disables (needs an unconditional branch)
    enhanced_range: tuple = (0.0, 1.0)  # open interval of t that gets the enhanced target
    dist_match_cof: float = 0.5  # lambda, weight of L_rectify
    loss: str = "robust"  # "robust" (Barron alpha=1, c=1e-3; production) or "l2" (MNIST tutorial)
    barron_alpha: float = 1.0
    barron_c: float = 1e-3
    time_weighting: bool = True  # w(t,r) = tan((1-(|t|-|r|))*pi/2.5) + 1
    time_dist: tuple = (1.0, 1.0, 1.0)  # t ~ Beta(a, b) * c  (official time_dist_ctrl)
    residual_clip: float = 1.0
    dv_clip: float = 1.0
    near_ratio: float = 0.05  # mul rows: r = t - U*t*min(near_ratio, cor)
    # official `use_image_free`: every row's data is replaced by the online model's own 1-step sample, and with a
    # frozen teacher (EMA decay 1) the CFG rows' target becomes the pure teacher guidance f_u + w (f_c - f_u)
    image_free: bool = False

    @classmethod
    def preset(cls, name: str, **overrides) -> ObjectiveConfig:
        """A preset of the TwinFlow family (twinflow, rcgm, fm; their values live in the objective registry,
        twinflow_core/objectives/twinflow.py); another registered method has its own config class."""

        method = get(name)
        if method.config_cls is not cls:
            raise ConfigError(
                f"objective preset {name!r} is not a {cls.__name__} preset; build it with "
                f"twinflow_core.objectives.build_config({name!r})"
            )
        return method.config(**overrides)

    @classmethod
    def from_dict(cls, values: dict) -> ObjectiveConfig:
        return config_from_dict(cls, values, "objective")

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        bad = sorted(set(self.probs) - set(BUCKETS))
        if bad:
            raise ConfigError(f"objective.probs: unknown bucket(s) {bad}; buckets are {list(BUCKETS)}")
        if any(float(v) < 0 for v in self.probs.values()) or sum(float(v) for v in self.probs.values()) <= 0:
            raise ConfigError(f"objective.probs: weights must be >= 0 with a positive sum, got {self.probs}")
        if self.loss not in ("robust", "l2"):
            raise ConfigError(f"objective.loss: {self.loss!r} is not 'robust' or 'l2'")
        if self.estimate_order < 0:
            raise ConfigError(f"objective.estimate_order must be >= 0, got {self.estimate_order}")
        if not 0.0 <= self.consistc_ratio <= 1.0:
            raise ConfigError(f"objective.consistc_ratio must be in [0, 1], got {self.consistc_ratio}")
        if self.delta <= 0:
            raise ConfigError(f"objective.delta must be > 0, got {self.delta}")


def per_sample_loss(
    pred: torch.Tensor, target: torch.Tensor, kind: str, alpha: float = 1.0, c: float = 1e-3
) -> torch.Tensor:
    """Per-sample loss, shape (B,). "l2": mean squared error. "robust": Barron-reweighted L2.

    robust = mse * sg((mse/c^2/|alpha-2| + 1)^((alpha-2)/2)) / c; for alpha=1 ~ mse/sqrt(mse + c^2), an L1-like loss.
    """
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    if kind == "l2":
        return mse
    if abs(alpha - 2.0) < 1e-5:
        weight = torch.ones_like(mse)
    else:
        weight = (mse / (c**2 + 1e-8) / abs(alpha - 2.0) + 1.0).pow((alpha - 2.0) / 2.0)
    return mse * weight.detach() / c


def time_weight(t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """tan((1 - (|t| - |r|)) * pi/2.5) + 1: 1 for the e2e jump (t-r = 1), ~4.08 as r -> t."""
    return torch.tan((1.0 - (t.abs() - r.abs())) * math.pi / 2.5) + 1.0


def _rows(cond, idx):
    """Select batch rows of a conditioning value (None, a tensor, or a tuple/list/dict of tensors)."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return cond[idx]
    if isinstance(cond, dict):
        return {k: _rows(v, idx) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)):
        return type(cond)(_rows(v, idx) for v in cond)
    raise TypeError(f"unsupported conditioning type {type(cond).__name__}")


_UNSTACKABLE = object()


def _stack_rows(a, b):
    """Rows of `a` then rows of `b` as one conditioning value, so that two calls can run as one forward; or
    _UNSTACKABLE when they cannot be stacked (one is None, or their shapes beyond the batch differ)."""
    if a is None and b is None:
        return None
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
            return _UNSTACKABLE
        return torch.cat([a, b])
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        parts = {k: _stack_rows(a[k], b[k]) for k in a}
        return _UNSTACKABLE if any(v is _UNSTACKABLE for v in parts.values()) else parts
    if isinstance(a, (list, tuple)) and type(a) is type(b) and len(a) == len(b):
        parts = [_stack_rows(u, w) for u, w in zip(a, b)]
        return _UNSTACKABLE if any(v is _UNSTACKABLE for v in parts) else type(a)(parts)
    return _UNSTACKABLE


def _paired_call(net, x_a, t_a, r_a, cond_a, x_b, t_b, r_b, cond_b):
    """net(x_a, t_a, r_a, cond_a) and net(x_b, ...) as one forward of stacked rows where the conditionings stack
    (a cheaper step: one call of 2n rows instead of two of n); otherwise as two calls. Returns both outputs."""
    cond = _stack_rows(cond_a, cond_b)
    if cond is _UNSTACKABLE:
        return net(x_a, t_a, r_a, cond_a), net(x_b, t_b, r_b, cond_b)
    out = net(torch.cat([x_a, x_b]), torch.cat([t_a, t_b]), torch.cat([r_a, r_b]), cond)
    return out[: x_a.shape[0]], out[x_a.shape[0] :]


def _encoded(net: nn.Module, cond):
    """`cond` encoded by `net` for reuse over several no-grad calls, when the network can (`encode_condition`);
    else `cond` itself (the diffusers adapters take precomputed prompt embeddings already)."""
    encode = getattr(net, "encode_condition", None)
    return cond if cond is None or encode is None else encode(cond)


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


def unwrap(net: nn.Module) -> nn.Module:
    """The module behind a DDP/FSDP-style wrapper (which exposes it as `.module`)."""
    return getattr(net, "module", net)


def partition(batch_size: int, probs: dict, device=None) -> dict[str, torch.Tensor]:
    """Contiguous boolean masks per bucket, sizes proportional to `probs` (last bucket takes the rest)."""
    if batch_size % 4:
        raise ConfigError(
            f"batch size {batch_size} is not divisible by 4: TwinFlow splits every batch into quarters "
            "(e2e / mul / any / adv); use a multiple of 4 (the global batch: a micro-batch takes its rows of it)"
        )
    weights = [float(probs.get(k, 0.0)) for k in BUCKETS]
    total = sum(weights)
    lengths = [int(round(batch_size * w / total)) for w in weights]
    lengths[-1] = batch_size - sum(lengths[:-1])
    masks, cursor = {}, 0
    for key, length in zip(BUCKETS, lengths):
        mask = torch.zeros(batch_size, dtype=torch.bool, device=device)
        mask[cursor : cursor + max(length, 0)] = True
        masks[key] = mask
        cursor += max(length, 0)
    return masks


@torch.no_grad()
def one_step(net: nn.Module, z: torch.Tensor, cond=None) -> torch.Tensor:
    """The 1-step generator: x = z - F(z, 1, 0)."""
    ones = torch.ones(z.shape[0], device=z.device)
    return z - net(z, ones, torch.zeros_like(ones), cond)


@torch.no_grad()
def rcgm_target(teacher, F, v, x_t, t, r, cond, order: int, delta: float, clip: float) -> torch.Tensor:
    """RCGM target sg(F) - clip(R): R is the residual of the consistency identity
    (t-r) u(x_t,t,r) = delta*v + (t_m - r) u(x_{t_m}, t_m, r), the right side rolled out by the teacher in `order`
    equal sub-steps from t_m = max(t - delta, r) to r. Rows with t - r < delta fall back to R = F - v."""
    gap = _bcast(t - r, F)
    small = gap < delta
    # the rollout only on the rows whose residual uses it (the official code rolls out every row and discards
    # the small-gap ones; about half the mul rows are such rows)
    need = ~small.view(-1)
    displacement = torch.zeros_like(F)
    if need.any():
        all_rows = bool(need.all())
        pick = (lambda a: a) if all_rows else (lambda a: a[need])
        t_n, r_n = pick(t), pick(r)
        t_m = torch.maximum(t_n - delta, r_n)
        x = pick(x_t) - delta * pick(v)
        part = torch.zeros_like(x)
        cond_n = cond if all_rows else _rows(cond, need)
        for i in range(order):
            tau_c = t_m + (r_n - t_m) * (i / order)
            tau_n = t_m + (r_n - t_m) * ((i + 1) / order)
            step = _bcast(tau_c - tau_n, x)
            G = teacher(x, tau_c, tau_n, cond_n)
            x = x - step * G
            part = part + step * G
        if all_rows:
            displacement = part.to(F.dtype)
        else:
            displacement[need] = part.to(F.dtype)
    residual = torch.where(small, F - v, (gap * F - displacement) / delta - v)
    return F - residual.clamp(-clip, clip)


@torch.no_grad()
def velocity_gap(net: nn.Module, x_fake: torch.Tensor, cond, clip: float, draws=None) -> torch.Tensor:
    """dv = clip(F(y, -s, -s) - F(y, s, s)) at y = s*z + (1-s)*x_fake, s ~ U(0,1): fake minus real velocity.
    `draws`: (z, s) already drawn (a slice of a larger batch's), else drawn here."""
    if draws is None:
        z = torch.randn_like(x_fake)
        s = torch.rand(x_fake.shape[0], device=x_fake.device)
    else:
        z, s = draws
    y = _bcast(s, z) * z + (1 - _bcast(s, z)) * x_fake
    cond = _encoded(net, cond)  # both branches read the same captions
    fake, real = _paired_call(net, y, -s, -s, cond, y, s, s, cond)  # one forward of both branches
    return (fake - real).float().clamp(-clip, clip)


def randn_rows(rows: int, like: torch.Tensor) -> torch.Tensor:
    """N(0,1) for `rows` rows shaped and laid out in memory as torch.randn_like lays out `like` (randn_like
    fills its tensor in memory order, and a strided tensor through another kernel than a contiguous one), so
    that rows [lo, hi) of it are what randn_like of a batch of `rows` rows holds there (the data comes
    channels-last)."""
    probe = torch.empty_like(like)  # the layout randn_like(like) would use
    order = sorted(range(probe.dim()), key=lambda d: -probe.stride(d))  # outermost dimension first
    shape = [rows, *like.shape[1:]]
    strides, step = [0] * len(shape), 1
    for d in reversed(order):
        strides[d], step = step, step * shape[d]
    return torch.empty_strided(shape, strides, dtype=like.dtype, device=like.device).normal_()


class _Slice:
    """Rows [lo, hi) of a global batch of `total` rows: the global batch's partition and random draws, cut to
    these rows, so that a micro-batch's share of the step does not depend on how the batch is split over micro-
    batches and processes. Every draw is made at the global batch's size, in the order the whole batch in one
    piece draws them (its noise is seeded per step), and the loss terms that average over a bucket's rows are
    sums over this slice's rows divided by the bucket's global row count, times the number of slices (the module
    and DDP average the slices' losses)."""

    def __init__(self, lo: int, hi: int, total: int, probs: dict, device):
        self.lo, self.hi, self.total = lo, hi, total
        self.slices = total // (hi - lo)
        self.global_masks = partition(total, probs, device)
        self.masks = {k: m[lo:hi] for k, m in self.global_masks.items()}

    def count(self, key: str) -> int:
        return int(self.global_masks[key].sum())

    def bucket_rows(self, key: str) -> slice:
        """This slice's rows among bucket `key`'s rows (buckets are contiguous)."""
        mask = self.global_masks[key]
        start = int(mask.nonzero()[0]) if mask.any() else 0
        n = int(mask.sum())
        return slice(min(max(self.lo - start, 0), n), min(max(self.hi - start, 0), n))

    randn = staticmethod(randn_rows)

    def share(self, values: torch.Tensor, key_count: int) -> torch.Tensor:
        """This slice's part of a mean over `key_count` global rows (summed over the slices: the mean)."""
        return values.sum() * (self.slices / key_count) if key_count else values.sum() * 0.0


class TwinFlowObjective:
    """`loss, stats = objective(net, x, cond, uncond=..., ema=...)` for one training batch.

    net: the trained network (possibly DDP-wrapped; only the grad forward goes through the wrapper).
    cond / uncond: conditioning rows for x and the null condition (same batch size), or None.
    ema: a `twinflow_core.ema.EMA` or None (None: the online net is the teacher). It is updated right after the
         grad forward, as in the official step, then provides the teacher for the CFG and RCGM targets.
    rows: (offset, total) when x is rows [offset, offset + len(x)) of a global batch of `total` rows split into
         equal micro-batches (over accumulation and processes): partition, noise and bucket means are then the
         global batch's (_Slice), so any split gives the same step; None (or total == len(x)): x is the batch.
    """

    def __init__(self, cfg: ObjectiveConfig | None = None):
        self.cfg = cfg or ObjectiveConfig()
        self.cfg.validate()

    def __call__(self, net: nn.Module, x: torch.Tensor, cond=None, uncond=None, ema=None, rows=None):
        cfg = self.cfg
        inner = unwrap(net)
        batch = x.shape[0]
        sl = None
        if rows is not None and int(rows[1]) != batch:
            sl = _Slice(int(rows[0]), int(rows[0]) + batch, int(rows[1]), cfg.probs, x.device)
        masks = partition(batch, cfg.probs, x.device) if sl is None else sl.masks
        adv = masks["adv"]
        drawn = batch if sl is None else sl.total

        def cut(v: torch.Tensor) -> torch.Tensor:
            return v if sl is None else v[sl.lo : sl.hi]

        with torch.no_grad():
            a, b, c = cfg.time_dist
            t = torch.distributions.Beta(a, b).sample((drawn,)).to(x.device).clamp(0, 1) * c
            r = t - torch.rand_like(t) * cfg.consistc_ratio * t
            t_near = t - torch.rand_like(t) * t * min(cfg.near_ratio, cfg.consistc_ratio)
            t, r, t_near = cut(t), cut(r), cut(t_near)
            t[masks["e2e"]], r[masks["e2e"]] = 1.0, 0.0
            r[masks["mul"]] = t_near[masks["mul"]]
            x = x.clone()
            if cfg.image_free:  # data-free distillation: the online model's own samples stand in for the data
                x = one_step(inner, torch.randn_like(x) if sl is None else cut(sl.randn(sl.total, x)), cond).to(x.dtype)
            if sl is None and adv.any():
                r[adv] = -t[adv]
                x[adv] = one_step(inner, torch.randn_like(x[adv]), _rows(cond, adv)).to(x.dtype)
            elif sl is not None and sl.count("adv"):
                # drawn even when no adv row is here, laid out as the rows picked by a mask are
                one_row = torch.zeros(len(x), dtype=torch.bool, device=x.device)
                one_row[0] = True
                noise = sl.randn(sl.count("adv"), x[one_row])[sl.bucket_rows("adv")]
                if adv.any():
                    r[adv] = -t[adv]
                    x[adv] = one_step(inner, noise, _rows(cond, adv)).to(x.dtype)
            z = torch.randn_like(x) if sl is None else cut(sl.randn(sl.total, x))
            x_t = _bcast(t, x) * z + (1 - _bcast(t, x)) * x
            v = z - x
            t[adv] = -t[adv]

        F = net(x_t, t, r, cond)  # the only forward that carries gradient
        if ema is not None:
            ema.update(inner)
        teacher = ema.teacher(inner) if ema is not None else inner
        fixed_teacher = ema is not None and ema.decay == 1.0

        with torch.no_grad():
            target = v.clone()
            use_cfg = cfg.enhanced_ratio != 0.0 and uncond is not None
            whole = masks if sl is None else sl.global_masks  # whether the batch has such rows, not this slice
            use_rcgm = (
                cfg.estimate_order >= 1 and cfg.consistc_ratio != 0.0 and bool((whole["e2e"] | whole["any"]).any())
            )
            # official `model_4_rcgm`: the EMA copy, or the online model when the EMA is off (decay 0) or
            # frozen (decay 1: the frozen copy guides only the CFG target; the rollout follows the online net)
            rcgm_teacher = inner if fixed_teacher else teacher
            rows = ~adv  # the rows whose target the CFG and RCGM teachers change
            cond_rows = _rows(cond, rows)
            # one network reads these captions in all its no-grad calls: encode them once (the CFG pair's
            # unconditional rows below are then encoded the same way, so both branches stack into one forward)
            shared = use_cfg and use_rcgm and rcgm_teacher is teacher
            if shared:
                cond_rows = _encoded(teacher, cond_rows)
            if use_cfg:
                lo, hi = cfg.enhanced_range
                # strict bounds as in the official code: e2e rows (t = 1) are not enhanced when hi = 1
                idx = (t > lo) & (t < hi) & rows
                if idx.any():
                    xi, ti = x_t[idx], t[idx]
                    c_idx = _rows(cond_rows, idx[rows])
                    u_idx = _rows(uncond, idx)
                    if shared:
                        u_idx = _encoded(teacher, u_idx)
                    f_c, f_u = _paired_call(teacher, xi, ti, ti, c_idx, xi, ti, ti, u_idx)
                    boost = cfg.enhanced_ratio * (f_c - f_u)
                    # official: v + w (f_c - f_u) in every mode but the image-free one with a frozen teacher, where
                    # v (a velocity towards the model's own sample) is replaced by the teacher's f_u + w (f_c - f_u)
                    pure_teacher = fixed_teacher and cfg.image_free
                    target[idx] = (f_u + boost) if pure_teacher else target[idx] + boost
            if use_rcgm:
                target[rows] = rcgm_target(
                    rcgm_teacher,
                    F.detach()[rows],
                    target[rows],
                    x_t[rows],
                    t[rows],
                    r[rows],
                    cond_rows,
                    cfg.estimate_order,
                    cfg.delta,
                    cfg.residual_clip,
                ).to(target.dtype)
            weight = time_weight(t, r) if cfg.time_weighting else torch.ones_like(t)
            weight[adv] = 1.0

        per_sample = per_sample_loss(F, target, cfg.loss, cfg.barron_alpha, cfg.barron_c) * weight
        if cfg.estimate_order >= 1:
            base = per_sample.mean()  # a slice's mean: the slices are equal in size, their mean is the batch's
        elif sl is None:  # the official multi-step (flow-matching) setting scores only the mul and adv rows
            scored = masks["mul"] | adv
            base = per_sample[scored].mean() if scored.any() else per_sample.sum() * 0.0
        else:
            scored = masks["mul"] | adv
            base = sl.share(per_sample[scored], int((sl.global_masks["mul"] | sl.global_masks["adv"]).sum()))

        stats = {"loss/base": base.item()}
        for key in BUCKETS:
            if sl is None and masks[key].any():
                stats[f"loss/{key}"] = per_sample[masks[key]].mean().item()
            elif sl is not None and sl.count(key):  # every slice reports every key of the batch (DDP averages)
                stats[f"loss/{key}"] = sl.share(per_sample[masks[key]], sl.count(key)).item()

        loss = base
        e2e = masks["e2e"]
        if cfg.consistc_ratio == 1.0 and cfg.dist_match_cof != 0.0 and (e2e.any() if sl is None else sl.count("e2e")):
            if e2e.any():
                x_fake = (x_t[e2e] - _bcast(t[e2e].abs(), x_t) * F[e2e]).detach()
                draws = None
                if sl is not None:  # the batch's dv draws (the step's last), this slice's e2e rows of them
                    n = sl.count("e2e")
                    z_all, s_all = sl.randn(n, x_fake), torch.rand(n, device=x_t.device)
                    part = sl.bucket_rows("e2e")
                    draws = (z_all[part], s_all[part])
                dv = velocity_gap(inner, x_fake, _rows(cond, e2e), cfg.dv_clip, draws)
                F_e2e = F[e2e]
                terms = per_sample_loss(F_e2e, (F_e2e - dv).detach(), cfg.loss, cfg.barron_alpha, cfg.barron_c)
            else:
                dv, terms = F.new_zeros((0,)), F.new_zeros((0,))
            if sl is None:
                rectify, dv_abs = terms.mean(), dv.abs().mean()
            else:
                rectify = sl.share(terms, sl.count("e2e"))
                dv_abs = sl.share(dv.abs(), sl.count("e2e") * x_t[0].numel())
            loss = loss + cfg.dist_match_cof * rectify
            stats["loss/rectify"] = rectify.item()
            stats["dv/abs_mean"] = dv_abs.item()
        stats["loss"] = loss.item()
        return loss, stats


def sanitize_and_clip_grads_(parameters, max_norm: float = 1.0) -> float:
    """Zero non-finite gradient entries in place, then clip the global norm (official: nan_to_num + clip 1.0).

    Infinities go to 0 rather than to the largest float (torch's nan_to_num default): a float-max entry would
    make the global norm overflow and the clip would wipe the whole step."""
    params = [p for p in parameters if p.grad is not None]
    for p in params:
        torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
    if not params:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

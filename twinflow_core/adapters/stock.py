"""Sampling an exported TwinFlow generator with stock diffusers pipelines (StableDiffusion3Pipeline,
QwenImagePipeline, SanaPipeline), without this project's sampler.

Two classes make a stock pipeline reproduce `load_generator(folder).generate(captions, nfe, seed)`:
- `TwinFlowScheduler` (a diffusers SchedulerMixin + ConfigMixin): the any-step sampler of twinflow_core/sampler.py
  as a scheduler: the same time grid for the asked number of steps (the pipelines' `num_inference_steps`; their
  own `sigmas` / `mu` are ignored: the grid is the sampler's), the same update x_hat = x - t*F,
  z_hat = x + (1-t)*F, the same re-noising (style "few": fresh noise at every step after the first).
- for full fine-tunes, one transformer subclass per family that keeps the r embedding (`time_text_embed_2` /
  `time_embed_2`, the official names, so `from_pretrained` loads those weights instead of dropping them) and adds
  emb2(r) * (t - r) to the native time embedding, by the same forward hook as TransformerVelocity.
A LoRA export needs only the scheduler: its transformer is the family's stock class, and the scheduler gives the
pipeline the timestep that the LoRA saw in training ((t - r/2) * 1000, "half" time input).

How r reaches the transformer. The pipelines pass the transformer only `timestep`, so:
1. `transformer(..., twinflow_r=r)` wins when a caller passes it (r in [0, 1] units, a float or a (B,) tensor);
2. else the transformer looks its timestep up in the schedule of the TwinFlowScheduler that ran `set_timesteps`
   last in this process (each pipeline call does, just before its loop; the schedule is dropped again at its last
   step) and takes that step's r;
3. a timestep in no such schedule (another scheduler, e.g. FlowMatchEulerDiscreteScheduler) gets r = t: gate 0,
   the instantaneous velocity, i.e. the base model, which is what the project's Euler reference evaluates.
One process sampling two TwinFlow pipelines in parallel threads would need (1).

Noise. The pipeline draws the initial latents from its `generator`; the scheduler's re-noising draws from the
`generator` the pipeline hands to `step` (SanaPipeline does), else from `scheduler.generator` (set it: SD3 and
Qwen-Image pipelines hand none), else from torch's global generator. The project's `generate(seed=s)` uses one
`torch.Generator().manual_seed(s)` for both, so the same generator object in both places reproduces it:

    g = torch.Generator().manual_seed(s)
    pipe.scheduler.generator = g
    images = pipe(captions, num_inference_steps=nfe, guidance_scale=1.0, generator=g, ...).images

Guidance: the any-step model has classifier-free guidance baked in; keep the pipeline's guidance off
(guidance_scale=1.0 for SD3 and SANA; no negative_prompt for Qwen-Image).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import sys
from pathlib import Path

import torch
from diffusers import QwenImageTransformer2DModel, SanaTransformer2DModel, SD3Transformer2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config

# DiffusionPipeline.from_pretrained picks a component's loading method by looking the base classes' names up in
# the module that model_index.json names: ModelMixin and SchedulerMixin must be attributes of this module
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
from safetensors import safe_open
from safetensors.torch import save_file

from twinflow_core.adapters.families import _qwen_pack, get_family
from twinflow_core.adapters.lora import LORA_FILE
from twinflow_core.adapters.velocity import add_gated_r
from twinflow_core.errors import ConfigError, DataError, TwinflowError, exit_code
from twinflow_core.sampler import STYLE_DEFAULTS, time_grid

MODULE = __name__  # what model_index.json names as these classes' library
_ACTIVE: dict | None = None  # the schedule of the last TwinFlowScheduler.set_timesteps: {"t": (K,), "r": (K,)}
_MATCH = 1e-4  # |timestep / scale - t| under which a model timestep is the schedule's step t (grid steps >= 0.1)


class TwinFlowScheduler(SchedulerMixin, ConfigMixin):
    """The any-step sampler (twinflow_core.sampler.sample) as a diffusers scheduler.

    style, gaps, rho, warp: as sample()'s (None: the style's defaults for the number of steps).
    time_input: "gated" (full fine-tune: the pipeline's timestep is t, r goes through the transformer) or "half"
      (LoRA: the timestep is t - r/2, as the LoRA was trained).
    timestep_scale: pipeline timestep = time * timestep_scale (1000: what SD3 and SANA feed their transformer,
      and what Qwen-Image's pipeline divides by 1000).
    packed_latents: Qwen-Image's pipeline holds latents as (B, h/2 * w/2, 4C); the re-noise is drawn in the
      (B, C, h, w) layout and packed, so that it equals the project's draw (square latents).
    """

    config_name = "scheduler_config.json"
    order = 1
    _compatibles: list = []

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        style: str = "few",
        gaps=None,
        rho=None,
        warp=(1.0, 1.0, 1.0),
        time_input: str = "gated",
        timestep_scale: float = 1000.0,
        packed_latents: bool = False,
    ):
        if style not in STYLE_DEFAULTS:
            raise ValueError(f"unknown sampling style {style!r}; choose one of {', '.join(STYLE_DEFAULTS)}")
        if time_input not in ("gated", "half"):
            raise ValueError(f"time_input {time_input!r} is not 'gated' or 'half'")
        self.generator: torch.Generator | None = None
        self.times = None
        self.timesteps = None
        self.sigmas = None
        self._rho = 0.0
        self._step_index = None
        self._begin_index = None
        self.num_inference_steps = None
        self.set_timesteps(1)
        self._deactivate()  # a schedule is active from a pipeline's set_timesteps on, not from loading

    @property
    def step_index(self):
        return self._step_index

    @property
    def begin_index(self):
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        self._begin_index = begin_index

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None, mu=None, timesteps=None):
        """The sampler's grid for `num_inference_steps` network evaluations. A pipeline that passes only
        `sigmas` or `timesteps` (QwenImagePipeline) gets as many steps as they have entries."""
        global _ACTIVE
        nfe = num_inference_steps or len(sigmas if sigmas is not None else timesteps if timesteps is not None else [])
        if not nfe:
            raise ValueError("TwinFlowScheduler.set_timesteps: give num_inference_steps")
        cfg = self.config
        defaults = STYLE_DEFAULTS[cfg.style]
        gaps = tuple(cfg.gaps) if cfg.gaps is not None else defaults["gaps"].get(nfe, defaults["gaps"]["default"])
        self._rho = float(defaults["rho"] if cfg.rho is None else cfg.rho)
        times = time_grid(int(nfe), gaps, tuple(cfg.warp))  # float64, nfe + 1 entries ending in 0
        t = torch.tensor([float(v) for v in times[:-1]], dtype=torch.float32)  # as sample()'s _full gives t
        r = {
            "few": torch.zeros_like(t),
            "any": torch.tensor([float(v) for v in times[1:]], dtype=torch.float32),
            "mul": t.clone(),
        }[cfg.style]
        model_time = t - r / 2 if cfg.time_input == "half" else t
        self.times = times
        self.sigmas = times.to(torch.float32)
        self.timesteps = (model_time * float(cfg.timestep_scale)).to(device)
        self.num_inference_steps = int(nfe)
        self._step_index = None
        self._begin_index = None
        _ACTIVE = {"t": t, "r": r, "owner": self}

    def _init_step_index(self, timestep):
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return
        value = float(torch.as_tensor(timestep).reshape(-1)[0])
        hits = (self.timesteps.cpu().double() - value).abs().argmin()
        self._step_index = int(hits)

    def _noise(self, sample: torch.Tensor, generator) -> torch.Tensor:
        if self.config.packed_latents and sample.dim() == 3:
            b, length, c4 = sample.shape
            side = int(round(length**0.5))
            if side * side == length:
                z = torch.randn(
                    (b, c4 // 4, 2 * side, 2 * side), generator=generator, dtype=sample.dtype, device=sample.device
                )
                return _qwen_pack(z)
        return torch.randn(sample.shape, generator=generator, dtype=sample.dtype, device=sample.device)

    def step(
        self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None, return_dict: bool = True
    ):
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        tc, tn = float(self.times[i]), float(self.times[i + 1])
        F = model_output.to(sample.dtype)
        x_hat = sample - tc * F
        if tn == 0.0:
            prev = x_hat
            self._deactivate()  # the pipeline's loop is over: later calls with other schedulers get r = t
        else:
            z_hat = sample + (1.0 - tc) * F
            rho = self._rho
            gen = generator if generator is not None else self.generator
            noise = self._noise(sample, gen) if rho > 0 else 0.0
            prev = (1.0 - tn) * x_hat + tn * (z_hat * (1.0 - rho) ** 0.5 + noise * rho**0.5)
        self._step_index = i + 1
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)

    def _deactivate(self):
        global _ACTIVE
        if _ACTIVE is not None and _ACTIVE.get("owner") is self:
            _ACTIVE = None

    def __len__(self):
        return self.config.num_train_timesteps


def _schedule_r(t_unit: torch.Tensor):
    """(t, r) per batch element from the active schedule, or None where the timestep is not one of its steps."""
    if _ACTIVE is None:
        return None
    sched_t = _ACTIVE["t"].to(t_unit.device)
    dist = (t_unit.float().reshape(-1, 1) - sched_t.reshape(1, -1)).abs()
    best, idx = dist.min(dim=1)
    if bool((best > _MATCH).any()):
        return None
    return sched_t[idx], _ACTIVE["r"].to(t_unit.device)[idx]


class _TwinFlowR:
    """Mixin for a diffusers transformer class: the r embedding as a submodule (loaded by from_pretrained under
    its official name) and, on every forward, emb2(r) * (t - r) added to the native time embedding's output."""

    twinflow_family: str = ""

    def _twinflow_setup(self):
        fam = get_family(self.twinflow_family)
        native = getattr(self, fam.time_embed)
        # the same module class and shape as the native one; its weights are the checkpoint's (from_pretrained)
        setattr(self, fam.r_embed, copy.deepcopy(native))
        self._twinflow_state = None
        native.register_forward_hook(self._twinflow_hook, with_kwargs=True)

    def _twinflow_hook(self, module, args, kwargs, output):
        if self._twinflow_state is None:
            return output
        fam = get_family(self.twinflow_family)
        return add_gated_r(getattr(self, fam.r_embed), self._twinflow_state, args, kwargs, output)

    def forward(self, *args, twinflow_r=None, **kwargs):
        bound = inspect.signature(super().forward).bind(*args, **kwargs)
        timestep = bound.arguments.get("timestep")
        if timestep is None:
            return super().forward(*args, **kwargs)
        scale = get_family(self.twinflow_family).time_scale
        timestep = torch.as_tensor(timestep)
        b = args[0].shape[0] if args else kwargs["hidden_states"].shape[0]
        t_unit = (timestep.expand(b) if timestep.dim() == 0 else timestep.reshape(b)).float() / scale
        if twinflow_r is not None:
            t, r = t_unit, torch.as_tensor(twinflow_r, device=t_unit.device).float().expand(b)
        else:
            found = _schedule_r(t_unit)
            t, r = found if found is not None else (t_unit, t_unit)
        self._twinflow_state = (r * scale, t - r)
        try:
            return super().forward(*args, **kwargs)
        finally:
            self._twinflow_state = None


def _init_like(base):
    """An __init__ that runs `base`'s (config registration included) and then adds the r embedding, with
    `base.__init__`'s signature, which ConfigMixin reads to know the config keys."""

    def __init__(self, *args, **kwargs):
        base.__init__(self, *args, **kwargs)
        self._twinflow_setup()

    __init__.__signature__ = inspect.signature(base.__init__)
    return __init__


class TwinFlowSD3Transformer2DModel(_TwinFlowR, SD3Transformer2DModel):
    twinflow_family = "sd3"
    __init__ = _init_like(SD3Transformer2DModel)


class TwinFlowQwenImageTransformer2DModel(_TwinFlowR, QwenImageTransformer2DModel):
    twinflow_family = "qwen_image"
    __init__ = _init_like(QwenImageTransformer2DModel)


class TwinFlowSanaTransformer2DModel(_TwinFlowR, SanaTransformer2DModel):
    twinflow_family = "sana"
    __init__ = _init_like(SanaTransformer2DModel)


TRANSFORMERS = {
    "sd3": TwinFlowSD3Transformer2DModel,
    "qwen_image": TwinFlowQwenImageTransformer2DModel,
    "sana": TwinFlowSanaTransformer2DModel,
}


def scheduler_for(family: str, time_input: str, transformer_config: dict | None = None) -> TwinFlowScheduler:
    """The scheduler that makes `family`'s stock pipeline feed its transformer the project's model time
    (transformer_config: the transformer's config.json, read for SANA's timestep_scale)."""
    scale = 1000.0
    if family == "sana":  # SanaPipeline multiplies the scheduler's timestep by the transformer's timestep_scale
        scale /= float((transformer_config or {}).get("timestep_scale") or 1.0)
    return TwinFlowScheduler(time_input=time_input, timestep_scale=scale, packed_latents=family == "qwen_image")


def mark_for_diffusers(folder, family: str, time_input: str) -> None:
    """Make an exported generator folder load in stock diffusers with these classes: scheduler/ holds a
    TwinFlowScheduler's config, model_index.json names it, and (full fine-tune) names the family's TwinFlow
    transformer class for transformer/ (its config's `_class_name` too). `DiffusionPipeline.from_pretrained`
    imports `twinflow_core.adapters.stock` by that name; the project's own loaders name their classes."""
    folder = Path(folder)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    tcfg_path = folder / "transformer" / "config.json"
    tcfg = json.loads(tcfg_path.read_text())
    sched_dir = folder / "scheduler"
    for f in sched_dir.glob("*.json"):
        f.unlink()
    scheduler_for(family, time_input, tcfg).save_pretrained(str(sched_dir))
    index["scheduler"] = [MODULE, TwinFlowScheduler.__name__]
    if time_input == "gated":
        cls = TRANSFORMERS[family].__name__
        index["transformer"] = [MODULE, cls]
        tcfg["_class_name"] = cls
        tcfg_path.write_text(json.dumps(tcfg, indent=2, sort_keys=True) + "\n")
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def comfyui_lora(lora_dir, out_file, family: str = "sd3") -> Path:
    """The exported LoRA (`lora/pytorch_lora_weights.safetensors`) as ComfyUI loads an SD3 LoRA: ComfyUI's SD3
    key map (comfy/lora.py, model_lora_keys_unet) takes the diffusers module names under "transformer." with
    `lora_A` / `lora_B` weights, which is what the export already holds, but it reads no safetensors metadata and
    scales by `<module>.alpha` / rank (1.0 when absent): this file adds the alpha tensors from the adapter's
    config. Qwen-Image and SANA are refused: their ComfyUI key maps are not verified here."""

    if family != "sd3":
        raise ConfigError(f"only sd3 LoRAs are converted (ComfyUI's {family} key map is not verified)")
    src = Path(lora_dir) / LORA_FILE if Path(lora_dir).is_dir() else Path(lora_dir)
    try:
        with safe_open(str(src), "pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
            meta = json.loads((f.metadata() or {}).get("lora_adapter_metadata") or "{}")
    except (OSError, ValueError) as err:
        raise DataError(f"{src}: unreadable ({str(err).splitlines()[0]})") from None
    rank, alpha = meta.get("transformer.r"), meta.get("transformer.lora_alpha")
    if rank is None or alpha is None:
        raise DataError(f"{src} records no lora_alpha / r (exported before they were written): re-export the adapter")
    patterns = (meta.get("transformer.alpha_pattern") or {}), (meta.get("transformer.rank_pattern") or {})
    if any(patterns):
        raise DataError(f"{src} has per-module alpha / rank patterns, which this converter does not map")
    out = {}
    for key, value in state.items():
        name = key if key.startswith("transformer.") else "transformer." + key
        out[name] = value.contiguous()
        if name.endswith(".lora_A.weight"):
            out[name[: -len(".lora_A.weight")] + ".alpha"] = torch.tensor(float(alpha))
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(out_file))
    return out_file


def main(argv=None) -> int:
    """python -m twinflow_core.adapters.stock comfyui EXPORT_FOLDER/lora OUT.safetensors: the exported SD3 LoRA
    in the key format ComfyUI's LoraLoader reads (alpha included)."""

    ap = argparse.ArgumentParser(prog="python -m twinflow_core.adapters.stock", description=main.__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("comfyui")
    conv.add_argument("lora")
    conv.add_argument("out")
    conv.add_argument("--family", default="sd3")
    args = ap.parse_args(argv)
    try:
        path = comfyui_lora(args.lora, args.out, args.family)
    except TwinflowError as err:
        print(f"comfyui: error: {err}", file=sys.stderr)
        return exit_code(err)
    print(f"comfyui: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

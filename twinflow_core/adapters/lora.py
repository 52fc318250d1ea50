"""LoRA fine-tuning of a TransformerVelocity (peft through diffusers' adapter API), as the official LoRA recipe:

- no second time embedding: the net must use time_input="half" (the native embedding gets t - r/2);
- adapter "default" trains (rank 64 / alpha 64, gaussian init, so it starts as a no-op); the targets include the
  timestep embedder's linears (official `lora_target_modules`);
- the EMA teacher is a second adapter "ema" (official "old"), updated as an EMA of "default" with the official
  warm-up; decay 0 = the online model; decay 1 = the frozen base, i.e. the same net with adapters disabled;
- export: the adapter's weights in the diffusers LoRA format (`pytorch_lora_weights.safetensors`), which
  `<Pipeline>.load_lora_weights(folder)` reads in a plain diffusers pipeline.
`LoraTeacher` has the interface the objective and the Lightning module use for twinflow_core.ema.EMA
(decay, update, teacher, model, state_dict), so the module needs no LoRA branch.

peft and diffusers are imported where used: they take seconds to import and only LoRA runs need them.
"""

# Lazy imports: diffusers, peft
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from twinflow_core.errors import ConfigError
from twinflow_core.files import sort_safetensors_metadata

# official SD3.5 `lora_target_modules`; Qwen-Image's joint attention has the same names (read only: add_lora
# copies the list it uses)
JOINT_ATTENTION_TARGETS = [
    "timestep_embedder.linear_1",
    "timestep_embedder.linear_2",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.add_q_proj",
    "attn.to_add_out",
    "attn.to_k",
    "attn.to_out.0",
    "attn.to_q",
    "attn.to_v",
]
# SANA's attention has no add_* parts
TARGETS = {
    "sd3": JOINT_ATTENTION_TARGETS,
    "qwen_image": JOINT_ATTENTION_TARGETS,
    "sana": ["timestep_embedder.linear_1", "timestep_embedder.linear_2", "to_k", "to_out.0", "to_q", "to_v"],
}
TRAIN, EMA_ADAPTER = "default", "ema"
LORA_FILE = "pytorch_lora_weights.safetensors"


def add_lora(net, rank: int = 64, alpha: float = 64.0, targets: list[str] | None = None, ema: bool = False) -> None:
    """Inject the trainable adapter (and the EMA adapter when `ema`) into net.transformer, in place.
    Afterwards only the "default" adapter's weights require grad."""
    from peft import LoraConfig

    if net.time_input != "half":
        raise ConfigError(
            "LoRA uses the native time embedding fed t - r/2 (official): build the net with time_input='half'"
        )
    tr = net.transformer
    cfg = LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha),
        init_lora_weights="gaussian",
        target_modules=live_targets(tr, list(targets or TARGETS[net.family.name])),
    )
    tr.requires_grad_(False)
    tr.add_adapter(cfg, adapter_name=TRAIN)
    if ema:
        tr.add_adapter(cfg, adapter_name=EMA_ADAPTER)
    tr.set_adapter(TRAIN)
    if ema:
        with torch.no_grad():
            for p_ema, p in _pairs(tr):
                p_ema.copy_(p)


def live_targets(transformer, targets: list[str]) -> list[str]:
    """The full names of the modules `targets` names (peft's rule: the name, or a suffix after a dot), less
    those whose output the model discards. A joint (MMDiT) model's output reads only the image stream, so after
    its last joint block the text stream is dropped: that block's context queries (`attn.add_q_proj`) and
    context output (`attn.to_add_out`) feed nothing (SD3 marks the block `context_pre_only` and builds no
    to_add_out; Qwen-Image builds both). An adapter there would be dead weights that never get a gradient."""
    dead = set()
    blocks = getattr(transformer, "transformer_blocks", None)
    joint = [i for i, b in enumerate(blocks or []) if getattr(getattr(b, "attn", None), "add_q_proj", None) is not None]
    if joint:
        last = f"transformer_blocks.{joint[-1]}.attn"
        dead = {f"{last}.add_q_proj", f"{last}.to_add_out"}
    picked = [
        name
        for name, _ in transformer.named_modules()
        if name and name not in dead and any(name == t or name.endswith("." + t) for t in targets)
    ]
    if not picked:
        raise ConfigError(f"model.lora_targets {targets}: no module of the {type(transformer).__name__} matches")
    return picked


def _pairs(transformer):
    """(ema weight, default weight) pairs of the LoRA layers."""
    named = dict(transformer.named_parameters())
    for name, p in named.items():
        if f".{TRAIN}." in name and "lora_" in name:
            twin = name.replace(f".{TRAIN}.", f".{EMA_ADAPTER}.")
            if twin in named:
                yield named[twin], p


def lora_parameters(net) -> list[torch.nn.Parameter]:
    return [p for n, p in net.named_parameters() if "lora_" in n and f".{TRAIN}." in n]


@contextmanager
def adapter(net, name: str | None):
    """Run with adapter `name` active (None: all adapters disabled, the base model); back to "default" after."""
    tr = net.transformer
    try:
        if name is None:
            tr.disable_adapters()
        else:
            tr.set_adapter(name)
        yield net
    finally:
        if name is None:
            tr.enable_adapters()
        tr.set_adapter(TRAIN)


class _WithAdapter:
    """A callable net that runs `net` under one adapter (what the objective calls as its teacher)."""

    def __init__(self, net, name):
        self.net, self.name = net, name

    def __call__(self, *args, **kwargs):
        with adapter(self.net, self.name):
            return self.net(*args, **kwargs)


class LoraTeacher:
    """The teacher rules of the official LoRA step: decay in (0,1) the "ema" adapter (warm-up as
    twinflow_core.ema.EMA), 0 the online net, 1 the frozen base (adapters disabled)."""

    model = None  # nothing to move to a device or to shard: the EMA lives inside the net

    def __init__(self, net, decay: float):
        if not 0.0 <= decay <= 1.0:
            raise ConfigError(f"ema decay must be in [0, 1], got {decay}")
        self.net, self.decay, self.current = net, float(decay), 0.0
        has_ema = EMA_ADAPTER in getattr(net.transformer, "peft_config", {})
        if 0.0 < self.decay < 1.0 and not has_ema:
            raise ConfigError("LoRA with 0 < ema_decay < 1 needs the EMA adapter: add_lora(..., ema=True)")

    @torch.no_grad()
    def update(self, online) -> None:
        if not 0.0 < self.decay < 1.0:
            return
        d = self.current
        for p_ema, p in _pairs(self.net.transformer):
            p_ema.mul_(d).add_(p.detach(), alpha=1.0 - d)
        self.current = d + (1.0 - d) * (self.decay - d) * 0.5

    def teacher(self, online):
        if self.decay == 0.0:
            return online
        return _WithAdapter(self.net, EMA_ADAPTER if self.decay < 1.0 else None)

    def state_dict(self) -> dict:
        ema = (
            {n: p.detach().clone() for n, p in self.net.transformer.named_parameters() if f".{EMA_ADAPTER}." in n}
            if 0.0 < self.decay < 1.0
            else None
        )
        return {"decay": self.decay, "current": self.current, "model": ema}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.current = float(state["decay"]), float(state["current"])
        if state.get("model"):
            named = dict(self.net.transformer.named_parameters())
            with torch.no_grad():
                for n, v in state["model"].items():
                    named[n].copy_(v)


def lora_state_dict(net, name: str = TRAIN) -> dict[str, torch.Tensor]:
    """The adapter's weights keyed as diffusers' LoRA loader expects (without the "transformer." prefix)."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(net.transformer, adapter_name=name)
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def export_lora(net, folder, name: str = TRAIN) -> Path:
    """Write `folder/pytorch_lora_weights.safetensors` in the diffusers LoRA format (loadable with
    `<Pipeline>.load_lora_weights(folder)`); `name` "ema" exports the EMA adapter."""
    import diffusers

    cls = getattr(diffusers, net.family.pipeline_class)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    # the adapter's config goes into the file's metadata: without it a loader assumes lora_alpha = rank, and an
    # adapter trained with another alpha would load at the wrong scale
    # (sets as sorted lists and the header's keys sorted: the same adapter gives the same bytes, a DVC output)
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in net.transformer.peft_config[name].to_dict().items()}
    cls.save_lora_weights(
        str(out),
        transformer_lora_layers=lora_state_dict(net, name),
        safe_serialization=True,
        transformer_lora_adapter_metadata=config,
    )
    sort_safetensors_metadata(out / LORA_FILE)
    return out

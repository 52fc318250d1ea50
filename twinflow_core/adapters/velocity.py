"""A diffusers transformer as the shared velocity net F(x, t, r, cond), with signed t and gated r.

Two ways of telling the model r, both from the official TwinFlow code:
- `time_input="gated"` (full fine-tuning, official `aux_time_embed: true`): a second copy of the model's own
  timestep-embedding module (named as the official code names it, e.g. `time_text_embed_2`) embeds r, and a
  forward hook on the native module adds its output gated by (t - r):  temb = emb1(t) + emb2(r) * (t - r).
  At r = t the gate is 0, so the net is the base model bit for bit; the model's forward is never copied.
- `time_input="half"` (the official LoRA recipe): no second embedding; the native embedding is fed t - r/2
  (an approximation the official code names; its issue #32 asks why). At the 1-step generator's (t=1, r=0)
  it sees t = 1, so a LoRA exported from it samples in a plain diffusers pipeline.
Signed (negative) time goes straight into the model's sinusoidal embedding, as in the official code.
"""

# Lazy imports: diffusers
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from twinflow_core.adapters.families import Family, family_of, get_family
from twinflow_core.errors import ConfigError, DataError

TIME_INPUTS = ("gated", "half")
ADAPTER_META = "twinflow_adapter.json"


def init_r_embedding(module: nn.Module, native: nn.Module, how: str) -> None:
    """Official inits: "copy" loads the native weights; "normal" draws Linear weights N(0, 0.02), bias 0."""
    if how == "copy":
        module.load_state_dict(native.state_dict())
    elif how == "normal":
        for m in module.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    else:
        raise ConfigError(f"r embedding init {how!r} is not 'copy' or 'normal'")


def _batch(v, n: int, like: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(v, device=like.device)
    return (v.expand(n) if v.dim() == 0 else v.reshape(n)).float()


def _gated(out: torch.Tensor, extra: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return out + extra * gate.to(extra.dtype).view(-1, *([1] * (extra.dim() - 1)))


def add_gated_r(r_embedding: nn.Module, r_state, args, kwargs, output):
    """The native time embedding's output plus the r embedding's, gated: emb1(t) + emb2(r) * (t - r).
    `r_state` is (r as the model's timestep, gate t - r); args / kwargs are the native module's call, which the
    r embedding gets with r in place of t. Shared by TransformerVelocity and the stock-diffusers classes."""
    r_in, gate = r_state
    if args:
        r_in = r_in.to(args[0].dtype)
        extra = r_embedding(r_in, *args[1:], **kwargs)
    else:
        kwargs = {**kwargs, "timestep": r_in.to(kwargs["timestep"].dtype)}
        extra = r_embedding(**kwargs)
    if isinstance(output, tuple):  # SANA's AdaLayerNormSingle: (modulation, embedded timestep), both gated
        return tuple(_gated(o, e, gate) for o, e in zip(output, extra))
    return _gated(output, extra, gate)


class TransformerVelocity(nn.Module):
    """F(x, t, r, cond): x latents (B, C, H, W), signed t and r (B,) or scalars, cond a dict of tensors
    (see families.py). Returns the velocity noise - data, shaped and typed like x."""

    def __init__(
        self, transformer: nn.Module, family: str | None = None, time_input: str = "gated", r_init: str | None = None
    ):
        super().__init__()
        if time_input not in TIME_INPUTS:
            raise ConfigError(f"time_input {time_input!r} not in {TIME_INPUTS}")
        self.transformer = transformer
        self.family: Family = get_family(family) if family else family_of(transformer)
        self.time_input = time_input
        self._r_state = None  # (r fed to emb2, gate) during one forward; None outside it
        native = getattr(transformer, self.family.time_embed, None)
        if native is None:
            raise ConfigError(f"{type(transformer).__name__} has no {self.family.time_embed!r} module")
        if time_input == "gated":
            if getattr(transformer, self.family.r_embed, None) is None:
                # modules added after from_pretrained hold whatever memory they got: initialise explicitly
                extra = copy.deepcopy(native)
                init_r_embedding(extra, native, r_init or self.family.r_init)
                setattr(transformer, self.family.r_embed, extra)
            native.register_forward_hook(self._add_r_embedding, with_kwargs=True)

    @property
    def r_embedding(self) -> nn.Module | None:
        return getattr(self.transformer, self.family.r_embed, None) if self.time_input == "gated" else None

    def _add_r_embedding(self, module, args, kwargs, output):
        if self._r_state is None:  # the model called outside our forward: behave as the base model
            return output
        return add_gated_r(self.r_embedding, self._r_state, args, kwargs, output)

    def model_time(self, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """The timestep the model's forward receives."""
        scale = self.family.time_scale
        return (t - r / 2) * scale if self.time_input == "half" else t * scale

    def forward(self, x: torch.Tensor, t, r, cond=None) -> torch.Tensor:
        if not isinstance(cond, dict):
            raise ConfigError(
                f"{self.family.name}: the condition must be a dict of prompt tensors "
                f"{list(self.family.cond_keys)}; the unconditional branch is the null prompt's"
            )
        missing = [k for k in self.family.cond_keys if k not in cond]
        if missing:
            raise ConfigError(f"{self.family.name}: condition lacks {missing}")
        b = x.shape[0]
        t, r = _batch(t, b, x), _batch(r, b, x)
        dtype = self.transformer.dtype
        cond = {k: (v.to(dtype) if torch.is_floating_point(v) else v) for k, v in cond.items()}
        kwargs = self.family.call(self.transformer, x.to(dtype), self.model_time(t, r), cond)
        if self.time_input == "gated":
            self._r_state = (r * self.family.time_scale, t - r)
        try:
            out = self.transformer(**kwargs)[0]
        finally:
            self._r_state = None
        return self.family.unpack(out, x).to(x.dtype)

    # ---- saving: the transformer as diffusers writes it (the r embedding's keys inside, official names)
    def save(self, directory) -> Path:
        out = Path(directory)
        self.transformer.save_pretrained(str(out), safe_serialization=True)
        meta = {
            "family": self.family.name,
            "time_input": self.time_input,
            "r_embed": self.family.r_embed if self.time_input == "gated" else None,
        }
        (out / ADAPTER_META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        return out


def load_transformer(source: str, family: str, subfolder: str | None = None, dtype=torch.float32):
    """`<Family.transformer_class>.from_pretrained(source)`: a local folder or a hub id (offline where
    HF_HUB_OFFLINE=1). Extra weights (an r embedding) in the file are left out here; load_velocity adds them."""
    import diffusers

    fam = get_family(family)
    cls = getattr(diffusers, fam.transformer_class)
    kwargs = {"subfolder": subfolder} if subfolder else {}
    log = logging.getLogger("diffusers.models.modeling_utils")
    expected = _OnlyREmbeddingUnused(fam.r_embed + ".")
    log.addFilter(expected)
    try:
        return cls.from_pretrained(source, dtype=dtype, **kwargs)  # diffusers 0.42: torch_dtype is deprecated
    except (OSError, ValueError) as err:
        where = f"{source}/{subfolder}" if subfolder else source
        raise DataError(f"{fam.transformer_class} from {where}: {str(err).splitlines()[0]}") from None
    finally:
        log.removeFilter(expected)


class _OnlyREmbeddingUnused(logging.Filter):
    """Drops diffusers' "Some weights of the model checkpoint ... were not used" report when the unused weights
    are exactly the r embedding's (load_velocity loads those itself); any other unused weight is still reported."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.getMessage())
        if "were not used when initializing" not in text:
            return True
        keys = re.findall(r"[\w.]+\.(?:weight|bias)\b", text.split("initializing", 1)[1])
        return not keys or not all(k.startswith(self.prefix) for k in keys)


def _weights_file(folder: Path) -> Path | None:
    files = sorted(folder.glob("*.safetensors"))
    return files[0] if len(files) == 1 else None


def load_velocity(
    source: str,
    family: str | None = None,
    time_input: str | None = None,
    subfolder: str | None = None,
    dtype=torch.float32,
) -> TransformerVelocity:
    """A TransformerVelocity from a transformer folder written by `save` or by diffusers (a base model, or an
    official TwinFlow checkpoint with its `time_text_embed_2` / `time_embed_2` weights). Without an adapter
    meta file, family and time_input must be given; an r embedding present in the weights is loaded, else
    initialised by the family rule."""

    folder = Path(source) / subfolder if subfolder else Path(source)
    meta_path = folder / ADAPTER_META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    family = family or meta.get("family")
    time_input = time_input or meta.get("time_input") or "gated"
    if not family:
        raise ConfigError(f"{folder}: no {ADAPTER_META}; name the model family")
    transformer = load_transformer(source, family, subfolder, dtype)
    net = TransformerVelocity(transformer, family, time_input)
    if time_input == "gated" and folder.is_dir():
        weights = _weights_file(folder)
        prefix = net.family.r_embed + "."
        state = (
            {k[len(prefix) :]: v for k, v in load_file(str(weights)).items() if k.startswith(prefix)} if weights else {}
        )
        if state:
            net.r_embedding.load_state_dict(state, strict=True)
        elif meta.get("r_embed"):
            raise DataError(
                f"{folder}: {ADAPTER_META} names an r embedding {meta['r_embed']!r} but the weights hold none"
            )
    return net

"""An exported generator sampled in stock diffusers (twinflow_core/adapters/stock.py) reproduces the project's own
`load_generator(folder).generate(captions, nfe, seed)` at 1, 2 and 4 NFE, for SD3, Qwen-Image and SANA, full
fine-tune and LoRA: the folder is loaded the way a diffusers user loads it (`DiffusionPipeline.from_pretrained`,
which reads the scheduler and transformer classes from model_index.json), with guidance off and one seeded
generator for the pipeline and the scheduler. The r embedding and the LoRA are perturbed so that they matter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from support.threads import one_thread  # noqa: E402,F401  (autouse)

REPO = Path(__file__).resolve().parents[1]
WORDS = "a photo of red circle two blue squares green triangle to the left square".split()
CAPTIONS = ["a photo of a red circle", "two blue squares"]
MAX_LEN, SIZE, SEED = 16, 32, 3
TOL = 1e-5


def _perturb(net, mode: str) -> None:
    """Full: the r embedding far from its N(0, 0.02) init; LoRA: a random adapter (B starts at zero)."""
    from twinflow_core.adapters.lora import add_lora

    g = torch.Generator().manual_seed(1)
    if mode == "lora":
        add_lora(net, rank=4)
    with torch.no_grad():
        params = (
            net.r_embedding.named_parameters()
            if mode == "full"
            else ((n, p) for n, p in net.transformer.named_parameters() if "lora_" in n)
        )
        for _, p in params:
            p.add_(torch.randn(p.shape, generator=g) * (0.3 if mode == "full" else 0.2))


def _export(pipe, family: str, mode: str, out: Path) -> Path:
    from twinflow_core.adapters.generator_files import generator_meta, save_latent_generator
    from twinflow_core.adapters.velocity import TransformerVelocity

    net = TransformerVelocity(pipe.transformer, family, "gated" if mode == "full" else "half")
    _perturb(net, mode)
    save_latent_generator(out, net, pipe, generator_meta(family, net.time_input, pipe, SIZE, MAX_LEN))
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """family, mode -> an exported generator folder (built once per pair)."""
    from twinflow_core.adapters.tiny import TINY_PIPELINES

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("stock")
    cache = {}

    def get(family, mode):
        if (family, mode) not in cache:
            pipe = TINY_PIPELINES[family](WORDS, seed=0, image_size=SIZE)
            cache[family, mode] = _export(pipe, family, mode, root / f"{family}-{mode}")
        return cache[family, mode]

    return get


def _stock_call(pipe, family: str, nfe: int, output_type: str):
    """What a diffusers user types: one seeded generator for the pipeline's latents and the scheduler's noise."""
    g = torch.Generator().manual_seed(SEED)
    pipe.scheduler.generator = g
    kw = dict(
        num_inference_steps=nfe,
        generator=g,
        height=SIZE,
        width=SIZE,
        output_type=output_type,
        max_sequence_length=MAX_LEN,
    )
    if family == "qwen_image":
        kw["true_cfg_scale"] = 1.0
    else:
        kw["guidance_scale"] = 1.0
    if family == "sana":
        kw.update(complex_human_instruction=None, use_resolution_binning=False)
    out = pipe(CAPTIONS, **kw).images
    if output_type == "latent" and family == "qwen_image":  # the pipeline's packed (B, h/2 * w/2, 4C) latents
        from twinflow_core.adapters.families import _qwen_unpack

        out = _qwen_unpack(out, torch.zeros(len(CAPTIONS), 16, SIZE // 2, SIZE // 2))
    return out


def _project_latents(gen, nfe: int) -> torch.Tensor:
    from twinflow_core.checkpoint import sample_images

    c, s = int(gen.meta["latent_channels"]), int(gen.meta["latent_size"])
    return torch.from_numpy(
        sample_images(
            gen.net,
            CAPTIONS,
            nfe,
            SEED,
            "few",
            0.0,
            noise_shape=(c, s, s),
            image_size=SIZE,
            encode=gen.encode,
            null=None,
            decode=lambda x: x.cpu().numpy(),
            chunk=64,
            device="cpu",
        )
    )


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def _load_stock(folder: Path, mode: str):
    import diffusers

    import twinflow_core.adapters.stock  # noqa: F401  (diffusers loads only classes of modules already imported)

    pipe = diffusers.DiffusionPipeline.from_pretrained(str(folder))
    if mode == "lora":
        pipe.load_lora_weights(str(folder / "lora"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _assert_reproduces(folder: Path, family: str, mode: str) -> None:
    from twinflow_core.checkpoint import load_generator

    gen = load_generator(folder)
    pipe = _load_stock(folder, mode)
    for nfe in (1, 2, 4):
        ours = _project_latents(gen, nfe)
        theirs = _stock_call(pipe, family, nfe, "latent")
        assert _rel(theirs, ours) <= TOL, (family, mode, nfe, _rel(theirs, ours))
        images = gen.generate(CAPTIONS, nfe=nfe, seed=SEED)
        stock = np.asarray(_stock_call(pipe, family, nfe, "np"))
        assert stock.shape == images.shape
        # the project rounds [0, 1] * 255 to uint8; the stock float image is the same to float error
        diff = np.abs(stock * 255.0 - images.astype(np.float64))
        assert diff.max() <= 0.5 + 1e-3, (family, mode, nfe, diff.max())


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("family", ["sd3", "qwen_image", "sana"])
def test_stock_pipeline_reproduces_generate(exported, family, mode):
    from twinflow_core.adapters import stock
    from twinflow_core.adapters.families import get_family

    folder = exported(family, mode)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["scheduler"] == ["twinflow_core.adapters.stock", "TwinFlowScheduler"]
    if mode == "full":
        assert index["transformer"] == ["twinflow_core.adapters.stock", stock.TRANSFORMERS[family].__name__]
    else:  # a LoRA's transformer is the family's stock class; only the scheduler is the project's
        assert index["transformer"] == ["diffusers", get_family(family).transformer_class]
    _assert_reproduces(folder, family, mode)


def test_the_stock_class_alone_drops_the_r_embedding(exported):
    """Why the full fine-tune needs the TwinFlow transformer class: the family's own class ignores the r
    embedding, and its 1-step output is not the generator's."""
    import diffusers

    from twinflow_core.checkpoint import load_generator

    folder = exported("sd3", "full")
    plain = diffusers.SD3Transformer2DModel.from_pretrained(str(folder), subfolder="transformer")
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(str(folder), transformer=plain)
    pipe.set_progress_bar_config(disable=True)
    ours = _project_latents(load_generator(folder), 1)
    assert _rel(_stock_call(pipe, "sd3", 1, "latent"), ours) > 1e-3


def test_outside_the_twinflow_scheduler_the_transformer_is_the_base(exported):
    """A timestep of no TwinFlow schedule (another scheduler's) gets r = t: the gate is 0, the base velocity."""
    import diffusers

    from twinflow_core.adapters.stock import TwinFlowSD3Transformer2DModel

    folder = exported("sd3", "full")
    ours = TwinFlowSD3Transformer2DModel.from_pretrained(str(folder), subfolder="transformer").eval()
    plain = diffusers.SD3Transformer2DModel.from_pretrained(str(folder), subfolder="transformer").eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g)
    kw = dict(
        encoder_hidden_states=torch.randn(1, 5, 32, generator=g),
        pooled_projections=torch.randn(1, 32, generator=g),
        timestep=torch.tensor([437.0]),
        return_dict=False,
    )
    with torch.no_grad():
        a, b = ours(x, **kw)[0], plain(x, **kw)[0]
        c = ours(x, twinflow_r=0.0, **kw)[0]
    assert torch.equal(a, b)
    assert _rel(c, b) > 1e-3  # an explicit r reaches the r embedding


def test_scheduler_config_round_trips_and_follows_the_sampler_grid(exported):
    from twinflow_core.adapters.stock import TwinFlowScheduler
    from twinflow_core.sampler import time_grid

    folder = exported("sd3", "lora")
    sched = TwinFlowScheduler.from_pretrained(str(folder), subfolder="scheduler")
    assert sched.config.time_input == "half" and sched.config.style == "few"
    sched.set_timesteps(2)
    grid = time_grid(2, (0.001, 0.6))
    assert torch.equal(sched.timesteps, grid[:-1].float() * 1000.0)
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.25, 4))  # QwenImagePipeline passes only sigmas: 4 steps
    assert len(sched.timesteps) == 4


def _plain_sd3_pipeline():
    """An SD3.5-style pipeline built from diffusers / transformers / tokenizers classes only (not adapters.tiny):
    word-level tokenizers, two CLIPs with projection, a T5 encoder, a KL VAE, an MMDiT-X transformer."""
    import diffusers
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    torch.manual_seed(7)
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>", *sorted(set(WORDS))])}

    def tokenizer():
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)]
        )
        return transformers.PreTrainedTokenizerFast(
            tokenizer_object=tok,
            pad_token="<pad>",
            unk_token="<unk>",
            bos_token="<s>",
            eos_token="</s>",
            model_max_length=24,
        )

    def clip():
        return transformers.CLIPTextModelWithProjection(
            transformers.CLIPTextConfig(
                vocab_size=len(vocab),
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=24,
                projection_dim=16,
                pad_token_id=0,
                bos_token_id=2,
                eos_token_id=3,
            )
        ).eval()

    t5 = transformers.T5EncoderModel(
        transformers.T5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2)
    ).eval()
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        scaling_factor=1.5305,
        shift_factor=0.0609,
    ).eval()
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=32,
        pos_embed_max_size=16,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    return diffusers.StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=clip(),
        tokenizer=tokenizer(),
        text_encoder_2=clip(),
        tokenizer_2=tokenizer(),
        text_encoder_3=t5,
        tokenizer_3=tokenizer(),
    )


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_a_pipeline_built_outside_the_project(tmp_path, mode):
    """The same, on an SD3.5-style pipeline saved by plain diffusers and loaded back the project's way."""
    from twinflow_core.adapters.codec import load_pipeline

    torch.set_num_threads(1)
    _plain_sd3_pipeline().save_pretrained(str(tmp_path / "base"), safe_serialization=True)
    pipe = load_pipeline(str(tmp_path / "base"), "sd3")
    _assert_reproduces(_export(pipe, "sd3", mode, tmp_path / "export"), "sd3", mode)


@pytest.mark.slow
def test_sampling_imports_without_the_orchestration_stack(exported):
    """Inference needs twinflow_core + diffusers only: with Prefect, DVC, MLflow, Lightning and Hydra unimportable,
    a child process loads an export, generates with the project's sampler and loads it in stock diffusers."""
    folder = exported("sana", "full")
    blocked = [
        "prefect",
        "dvc",
        "mlflow",
        "lightning",
        "pytorch_lightning",
        "hydra",
        "omegaconf",
        "flows",
        "great_expectations",
        "s3fs",
        "psycopg",
    ]
    code = "\n".join(
        [
            "import sys",
            f"for m in {blocked!r}: sys.modules[m] = None",
            "import torch, diffusers, twinflow_core.adapters.stock",
            "from twinflow_core.checkpoint import load_generator",
            f"print(load_generator({str(folder)!r}).generate(['two blue squares'], nfe=2, seed=0).shape)",
            f"p = diffusers.DiffusionPipeline.from_pretrained({str(folder)!r})",
            "print(type(p.scheduler).__name__, type(p.transformer).__name__)",
        ]
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(1, 32, 32, 3)" in done.stdout
    assert "TwinFlowScheduler TwinFlowSanaTransformer2DModel" in done.stdout


def test_lora_export_keeps_alpha_and_converts_for_comfyui(tmp_path, capsys):
    """An adapter trained with lora_alpha != rank exports with its config (diffusers and the project's loader would
    otherwise scale it by 1), and `python -m twinflow_core.adapters.stock comfyui` writes the keys ComfyUI's SD3
    LoRA map reads: "transformer.<diffusers module>.lora_A/lora_B.weight" plus "<module>.alpha"."""
    from safetensors.torch import load_file

    from twinflow_core.adapters.codec import encode_prompts
    from twinflow_core.adapters.generator_files import generator_meta, save_latent_generator
    from twinflow_core.adapters.lora import add_lora
    from twinflow_core.adapters.pipeline import load_latent_generator
    from twinflow_core.adapters.tiny import tiny_sd3_pipeline
    from twinflow_core.adapters.velocity import TransformerVelocity

    torch.set_num_threads(1)
    pipe = tiny_sd3_pipeline(WORDS, seed=0, image_size=SIZE)
    net = TransformerVelocity(pipe.transformer, "sd3", "half")
    add_lora(net, rank=4, alpha=16.0)
    with torch.no_grad():
        for n, p in net.transformer.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    folder = save_latent_generator(tmp_path / "gen", net, pipe, generator_meta("sd3", "half", pipe, SIZE, MAX_LEN))
    gen = load_latent_generator(folder)
    x, t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.ones(2)
    cond = encode_prompts(pipe, "sd3", CAPTIONS, MAX_LEN)
    with torch.no_grad():
        assert torch.equal(gen.net(x, t, t * 0, cond), net(x, t, t * 0, cond))

    out = tmp_path / "comfy.safetensors"
    done = subprocess.run(
        [sys.executable, "-m", "twinflow_core.adapters.stock", "comfyui", str(folder / "lora"), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    state = load_file(str(out))
    modules = {k[: -len(".lora_A.weight")] for k in state if k.endswith(".lora_A.weight")}
    assert modules and all(m.startswith("transformer.") for m in modules)
    # the diffusers names ComfyUI's mmdit_to_diffusers maps (to_q/k/v and add_*_proj into the fused qkv)
    mapped = (
        "attn.to_q",
        "attn.to_k",
        "attn.to_v",
        "attn.add_q_proj",
        "attn.add_k_proj",
        "attn.add_v_proj",
        "attn.to_out.0",
        "attn.to_add_out",
        "time_text_embed.timestep_embedder.linear_1",
        "time_text_embed.timestep_embedder.linear_2",
    )
    assert all(m.endswith(mapped) for m in modules), sorted(modules)
    named = dict(net.transformer.named_modules())
    for m in modules:
        assert float(state[m + ".alpha"]) == 16.0
        layer = named[m[len("transformer.") :]]
        delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight * layer.scaling["default"]
        # ComfyUI: alpha / rank * up @ down
        ours = (
            float(state[m + ".alpha"])
            / state[m + ".lora_A.weight"].shape[0]
            * (state[m + ".lora_B.weight"] @ state[m + ".lora_A.weight"])
        )
        assert torch.allclose(ours, delta.detach(), atol=1e-7)
    from twinflow_core.adapters.stock import main

    capsys.readouterr()  # what the export printed
    assert main(["comfyui", str(tmp_path / "nope"), str(tmp_path / "x.safetensors")]) == 11  # DataError's family
    assert not (tmp_path / "x.safetensors").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and "Traceback" not in err[0]

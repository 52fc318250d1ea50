"""Tiny random diffusers models and whole tiny SD3, Qwen-Image and SANA pipelines, built offline (no hub is
reachable here).

For tests and for the CPU recipe `sd3_tiny`: real diffusers / transformers classes at widths of 16-32, so the
real loading, saving, LoRA and training code runs in milliseconds. SD3's tokenizers are `tokenizers` WordLevel
models over a given word list, wrapped in PreTrainedTokenizerFast; CLIP takes its pooled vector at the EOS
token, so the tokenizer appends one. Qwen-Image's and SANA's are the real tokenizer classes (Qwen2Tokenizer,
GemmaTokenizer) with a BPE vocabulary learned from the word list, because their pipelines count tokens.
"""

# Lazy imports: diffusers, numpy, tokenizers, transformers
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import argparse
import importlib
import json
import string
from pathlib import Path

import torch

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]  # ids 0..3
# the longest shapes-world caption (geneval/dpg prompts included) is 41 word tokens with <s> </s>: the tiny
# tokenizers keep all of it (shorter limits truncate prompts, and tokenizers warn at every encode)
CLIP_MAX_LEN = 48
T5_MAX_LEN = 48


def tiny_transformer(family: str, seed: int = 0, sd35: bool = False, **overrides):
    """A random transformer of `family` for 16x16x4 latents (qwen_image: 16 latent channels, packed 2x2)."""
    import diffusers

    torch.manual_seed(seed)
    if family == "sd3":
        kw = dict(
            sample_size=16,
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            caption_projection_dim=32,
            pooled_projection_dim=32,
            pos_embed_max_size=16,
        )
        if sd35:  # SD3.5-Medium's distinctive parts: MMDiT-X dual attention and RMS qk-norm
            kw.update(dual_attention_layers=(0,), qk_norm="rms_norm")
        return diffusers.SD3Transformer2DModel(**{**kw, **overrides})
    if family == "qwen_image":
        kw = dict(
            patch_size=2,
            in_channels=64,
            out_channels=16,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            axes_dims_rope=(4, 6, 6),
        )
        return diffusers.QwenImageTransformer2DModel(**{**kw, **overrides})
    if family == "sana":
        kw = dict(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=2,
            num_cross_attention_heads=2,
            cross_attention_head_dim=16,
            cross_attention_dim=32,
            caption_channels=32,
            sample_size=16,
            patch_size=1,
        )
        return diffusers.SanaTransformer2DModel(**{**kw, **overrides})
    raise ValueError(f"no tiny {family}")


def latent_channels(family: str) -> int:
    return 16 if family == "qwen_image" else 4


def word_tokenizer(words, max_len: int):
    """A PreTrainedTokenizerFast over `words` (lower-cased whitespace words; others -> <unk>), <s> ... </s>."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS)}
    for w in sorted({str(w).lower() for w in words}):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=max_len,
    )


def tiny_sd3_pipeline(words, seed: int = 0, sd35: bool = False, image_size: int = 32):
    """A StableDiffusion3Pipeline of tiny random parts: two CLIPs with projection, a T5 encoder, three word
    tokenizers, an AutoencoderKL with 2x downsampling and 4 latent channels, a flow-matching scheduler."""
    import diffusers
    import transformers

    torch.manual_seed(seed)
    tok = word_tokenizer(words, CLIP_MAX_LEN)
    tok3 = word_tokenizer(words, T5_MAX_LEN)
    n = len(tok)

    def clip():
        cfg = transformers.CLIPTextConfig(
            vocab_size=n,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=CLIP_MAX_LEN,
            projection_dim=16,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
        )
        return transformers.CLIPTextModelWithProjection(cfg).eval()

    t5 = transformers.T5EncoderModel(
        transformers.T5Config(
            vocab_size=n, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2, pad_token_id=0, eos_token_id=3
        )
    ).eval()
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=image_size,
        scaling_factor=1.0,
        shift_factor=0.0,
    ).eval()
    transformer = tiny_transformer("sd3", seed=seed, sd35=sd35, sample_size=image_size // 2)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0)
    return diffusers.StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=clip(),
        tokenizer=tok,
        text_encoder_2=clip(),
        tokenizer_2=word_tokenizer(words, CLIP_MAX_LEN),
        text_encoder_3=t5,
        tokenizer_3=tok3,
    )


QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]  # GemmaTokenizer's default ids 0..4


def _bpe_over(tokenizer_cls, corpus, specials, alphabet, **kwargs):
    """A `tokenizer_cls` (a BPE TokenizersBackend: Qwen2Tokenizer, GemmaTokenizer) whose vocabulary and merges are
    learned from `corpus` by the tokenizers BPE trainer through the class's own normalizer and pre-tokenizer, so
    every corpus word is one token, as it would be in the real vocabulary (the pipelines rely on token counts:
    QwenImagePipeline drops the first 34 tokens, its prompt template's)."""

    from tokenizers import trainers

    empty = tokenizer_cls(**kwargs)
    trainer = trainers.BpeTrainer(
        vocab_size=1 << 20, min_frequency=1, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    empty.backend_tokenizer.train_from_iterator(corpus, trainer)
    model = json.loads(empty.backend_tokenizer.to_str())["model"]
    return tokenizer_cls(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]], **kwargs)


def qwen_tokenizer(words):
    """A Qwen2Tokenizer (byte-level BPE) over `words` and QwenImagePipeline's prompt template, <|im_start|> and
    <|im_end|> special, so that the template's system part is as many tokens as the pipeline drops (34, as with
    the real Qwen2.5-VL vocabulary)."""
    import diffusers
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import Qwen2Tokenizer

    # the template and its drop count are set in the pipeline's __init__: read them from an empty one
    empty = diffusers.QwenImagePipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, transformer=None)
    template, drop = empty.prompt_template_encode, empty.prompt_template_encode_start_idx
    words = sorted({str(w).lower() for w in words})
    corpus = [template.format(" ".join(words)), *words, *(" " + w for w in words)]
    tok = _bpe_over(Qwen2Tokenizer, corpus, QWEN_SPECIALS[:1], pre_tokenizers.ByteLevel.alphabet())
    tok.add_tokens([AddedToken(s, special=True) for s in QWEN_SPECIALS[1:]])
    n = len(tok(template.split("{}")[0])["input_ids"])
    if n != drop:  # the pipeline would cut caption tokens or keep template ones
        raise RuntimeError(
            f"tiny Qwen2 tokenizer: the prompt template's system part is {n} tokens, QwenImagePipeline drops {drop}"
        )
    return tok


def gemma_tokenizer(words):
    """A GemmaTokenizer (BPE, "▁" for spaces, <bos> first) over `words`."""

    from transformers import GemmaTokenizer

    words = sorted({str(w).lower() for w in words})
    alphabet = list(string.ascii_lowercase + string.digits + string.punctuation + "▁")
    return _bpe_over(GemmaTokenizer, [*words, *(" " + w for w in words)], GEMMA_SPECIALS, alphabet, add_bos_token=True)


def tiny_qwen_image_pipeline(words, seed: int = 0, image_size: int = 32):
    """A QwenImagePipeline of tiny random parts: a Qwen2.5-VL text encoder (its vision tower one block wide),
    a Qwen2Tokenizer over `words`, an AutoencoderKLQwenImage with 2x downsampling and its 16 latent channels,
    a flow-matching scheduler and the tiny Qwen-Image transformer. `image_size` is taken for the
    builders' common signature only: no part has a fixed size (any multiple of 4 px: 2x VAE, 2x2 patches)."""
    import diffusers
    import transformers

    torch.manual_seed(seed)
    tok = qwen_tokenizer(words)
    cfg = transformers.Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            bos_token_id=None,
            eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            depth=1,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=32,
            patch_size=2,
            temporal_patch_size=1,
            window_size=8,
            fullatt_block_indexes=[0],
        ),
    )
    text_encoder = transformers.Qwen2_5_VLForConditionalGeneration(cfg).eval()
    vae = diffusers.AutoencoderKLQwenImage(
        base_dim=8, z_dim=16, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False]
    ).eval()
    transformer = tiny_transformer("qwen_image", seed=seed)
    return diffusers.QwenImagePipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        transformer=transformer,
    )


def tiny_sana_pipeline(words, seed: int = 0, image_size: int = 32):
    """A SanaPipeline of tiny random parts: a Gemma2 text encoder, a GemmaTokenizer over `words`, an AutoencoderDC
    with 2x downsampling (ResBlock then EfficientViT block, as the real DC-AE's stages; its scaling factor), the
    flow-sigma DPM-Solver the real SANA ships, and the tiny SANA transformer."""
    import diffusers
    import transformers

    torch.manual_seed(seed)
    tok = gemma_tokenizer(words)
    cfg = transformers.Gemma2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    text_encoder = transformers.Gemma2Model(cfg).eval()
    vae = diffusers.AutoencoderDC(
        latent_channels=4,
        attention_head_dim=8,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 16),
        decoder_block_out_channels=(8, 16),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        scaling_factor=0.41407,
    ).eval()
    transformer = tiny_transformer("sana", seed=seed, sample_size=image_size // 2)
    scheduler = diffusers.DPMSolverMultistepScheduler(
        use_flow_sigmas=True, flow_shift=1.0, prediction_type="flow_prediction"
    )
    return diffusers.SanaPipeline(
        tokenizer=tok, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


TINY_PIPELINES = {"sd3": tiny_sd3_pipeline, "qwen_image": tiny_qwen_image_pipeline, "sana": tiny_sana_pipeline}


def save_tiny_pipeline(folder, family: str, words, seed: int = 0, image_size: int = 32, **kw) -> Path:
    if family not in TINY_PIPELINES:
        raise ValueError(f"no tiny {family} pipeline; families: {', '.join(TINY_PIPELINES)}")
    pipe = TINY_PIPELINES[family](words, seed=seed, image_size=image_size, **kw)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return Path(folder)


def save_tiny_sd3_pipeline(folder, words, seed: int = 0, sd35: bool = False, image_size: int = 32) -> Path:
    return save_tiny_pipeline(folder, "sd3", words, seed=seed, image_size=image_size, sd35=sd35)


def main(argv=None) -> None:
    """python -m twinflow_core.adapters.tiny OUT [--family sd3|qwen_image|sana] [--words-from PREPARED_DATASET]
    [--sd35] [--wrap]: write a tiny random pipeline folder of the family (safetensors) whose tokenizers know the
    dataset's caption words; --wrap also makes it a base generator (model.json + model.safetensors,
    twinflow_core/adapters/generator_files.py wrap_base)."""

    from twinflow_core.data.prepared import read_meta

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("out")
    ap.add_argument("--family", default="sd3", choices=sorted(TINY_PIPELINES))
    ap.add_argument("--words-from", default="shapes", help="shapes | digits | a prepared dataset folder")
    ap.add_argument("--sd35", action="store_true", help="sd3 only: SD3.5-Medium's dual attention and qk-norm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--wrap", action="store_true", help="make it a base generator (conf/experiment/sd3_tiny.yaml)")
    ap.add_argument(
        "--max-len", type=int, default=T5_MAX_LEN, help="prompt tokens of the wrapped base (model.max_sequence_length)"
    )
    args = ap.parse_args(argv)
    if args.sd35 and args.family != "sd3":
        ap.error("--sd35 is a variant of --family sd3")
    if args.words_from in ("shapes", "digits"):  # a source's own vocabulary: no prepared dataset needed
        words = importlib.import_module(f"twinflow_core.data.{args.words_from}").vocabulary()
    else:
        words = read_meta(args.words_from).get("vocabulary") or []
    kw = {"sd35": True} if args.sd35 else {}
    folder = save_tiny_pipeline(args.out, args.family, words, seed=args.seed, image_size=args.image_size, **kw)
    if args.wrap:
        from twinflow_core.adapters.generator_files import wrap_base

        wrap_base(folder, args.family, args.image_size, args.max_len)
    print(f"tiny {args.family} pipeline ({len(words)} words) -> {folder}")


if __name__ == "__main__":
    main()

"""Tiny random diffusers models and a whole tiny SD3 pipeline, built offline (no hub is reachable here).

For tests and for the CPU recipe `sd3_tiny`: real diffusers / transformers classes at widths of 16-32, so the
real loading, saving, LoRA and training code runs in milliseconds. The tokenizers are `tokenizers` WordLevel
models over a given word list, wrapped in PreTrainedTokenizerFast; CLIP takes its pooled vector at the EOS
token, so the tokenizer appends one.
"""
from __future__ import annotations

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
        kw = dict(sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=16,
                  num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=32,
                  pooled_projection_dim=32, pos_embed_max_size=16)
        if sd35:  # SD3.5-Medium's distinctive parts: MMDiT-X dual attention and RMS qk-norm
            kw.update(dual_attention_layers=(0,), qk_norm="rms_norm")
        return diffusers.SD3Transformer2DModel(**{**kw, **overrides})
    if family == "qwen_image":
        kw = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16,
                  num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6))
        return diffusers.QwenImageTransformer2DModel(**{**kw, **overrides})
    if family == "sana":
        kw = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
                  num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32,
                  caption_channels=32, sample_size=16, patch_size=1)
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
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", model_max_length=max_len)


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
        cfg = transformers.CLIPTextConfig(vocab_size=n, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, max_position_embeddings=CLIP_MAX_LEN,
                                          projection_dim=16, pad_token_id=0, bos_token_id=2, eos_token_id=3)
        return transformers.CLIPTextModelWithProjection(cfg).eval()

    t5 = transformers.T5EncoderModel(transformers.T5Config(vocab_size=n, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                                           num_heads=2, pad_token_id=0, eos_token_id=3)).eval()
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                                  layers_per_block=1, latent_channels=4, norm_num_groups=4,
                                  sample_size=image_size, scaling_factor=1.0, shift_factor=0.0).eval()
    transformer = tiny_transformer("sd3", seed=seed, sd35=sd35, sample_size=image_size // 2)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0)
    return diffusers.StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=clip(), tokenizer=tok,
        text_encoder_2=clip(), tokenizer_2=word_tokenizer(words, CLIP_MAX_LEN), text_encoder_3=t5, tokenizer_3=tok3)


def save_tiny_sd3_pipeline(folder, words, seed: int = 0, sd35: bool = False, image_size: int = 32) -> Path:
    pipe = tiny_sd3_pipeline(words, seed=seed, sd35=sd35, image_size=image_size)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return Path(folder)


def main(argv=None) -> None:
    """python -m twinflow_core.adapters.tiny OUT [--words-from PREPARED_DATASET] [--sd35] [--wrap]: write a tiny
    random SD3 pipeline folder (safetensors) whose tokenizers know the dataset's caption words; --wrap also makes it
    a base generator (model.json + model.safetensors, twinflow_core/adapters/pipeline.py wrap_base)."""
    import argparse

    from twinflow_core.data.prepared import read_meta

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("out")
    ap.add_argument("--words-from", default="shapes", help="shapes | digits | a prepared dataset folder")
    ap.add_argument("--sd35", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--wrap", action="store_true", help="make it a base generator (conf/experiment/sd3_tiny.yaml)")
    ap.add_argument("--max-len", type=int, default=T5_MAX_LEN, help="prompt tokens of the wrapped base (model.max_sequence_length)")
    args = ap.parse_args(argv)
    if args.words_from in ("shapes", "digits"):  # a source's own vocabulary: no prepared dataset needed
        import importlib

        words = importlib.import_module(f"twinflow_core.data.{args.words_from}").vocabulary()
    else:
        words = read_meta(args.words_from).get("vocabulary") or []
    folder = save_tiny_sd3_pipeline(args.out, words, seed=args.seed, sd35=args.sd35, image_size=args.image_size)
    if args.wrap:
        from twinflow_core.adapters.pipeline import wrap_base

        wrap_base(folder, "sd3", args.image_size, args.max_len)
    print(f"tiny SD3 pipeline ({len(words)} words) -> {folder}")


if __name__ == "__main__":
    main()

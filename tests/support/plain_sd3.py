"""A tiny random Stable Diffusion 3 pipeline folder made with plain diffusers and transformers only, as a user's
downloaded model is made elsewhere: nothing of twinflow_core builds it (tests of the documented path must not
lean on the project's own writer). Character-level CLIP tokenizers (a vocabulary of single letters and digits,
no merges) serve all three text encoders, so nothing is downloaded.

    python tests/support/plain_sd3.py OUT [--image-size 32]
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path


def build(out: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    import torch
    import transformers
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    torch.manual_seed(seed)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + string.digits:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)

    def tokenizer(max_len):
        return transformers.CLIPTokenizer(vocab=dict(vocab), merges=[], model_max_length=max_len)

    def clip():
        cfg = transformers.CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
        return transformers.CLIPTextModelWithProjection(cfg).eval()

    t5 = transformers.T5EncoderModel(
        transformers.T5Config(
            vocab_size=len(vocab),
            d_model=16,
            d_kv=8,
            d_ff=32,
            num_layers=1,
            num_heads=2,
            pad_token_id=1,
            eos_token_id=1,
        )
    ).eval()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=image_size,
        scaling_factor=1.5305,
        shift_factor=0.0609,
    ).eval()  # SD3's own VAE constants
    transformer = SD3Transformer2DModel(
        sample_size=image_size // 2,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=16,
        pooled_projection_dim=32,
        out_channels=4,
        pos_embed_max_size=image_size,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
        vae=vae,
        text_encoder=clip(),
        tokenizer=tokenizer(77),
        text_encoder_2=clip(),
        tokenizer_2=tokenizer(77),
        text_encoder_3=t5,
        tokenizer_3=tokenizer(256),
    )
    pipe.save_pretrained(out)
    return Path(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args()
    print(build(args.out, args.image_size))
    sys.exit(0)

"""Shared fixtures: tiny configs, and real checkpoints built with transformers (random weights).

transformers is the reference implementation here; the package itself never imports it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_images"
DATA = Path(__file__).resolve().parent / "data"
PHOTOS = [SAMPLES / n for n in ("cat.jpg", "coffee.jpg", "rocket.jpg", "camera.png", "logo.png")]

# The odd intermediate size (37) catches a hard-coded 4*D.
TINY = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
            image_size=32, patch_size=8)
# Patch 14, head dim 16 (not 64), and an image size that is not a multiple of the patch, like
# so400m-patch14-384 (384 = 27 * 14 + 6): the patch conv ignores the last 3 pixels.
PATCH14 = dict(hidden_size=48, intermediate_size=37, num_attention_heads=3, num_hidden_layers=2,
               image_size=45, patch_size=14)
TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                 vocab_size=99, max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def build_checkpoint(path: Path, vision: dict, layout: str = "vision5", head: bool = True,
                     preprocessor: bool = True, shard_size: str | None = None, seed: int = 0,
                     text: dict | None = None, tokenizer: str | None = None):
    """Save a random-weight SigLIP checkpoint with transformers; return the reference vision model.

    layout: "full" (SiglipModel: vision_model. + text_model. + logit_scale), "vision5" (SiglipVisionModel
    as transformers 5 saves it: no prefix), "vision4" (the same tensors with the `vision_model.` prefix
    transformers 4 wrote). text: the text config of a full one (default TINY_TEXT); tokenizer: write real
    tokenizer files beside it, "siglip" (spiece.model) or "gemma" (SigLIP 2's tokenizer.model).
    """
    import transformers
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    vcfg = transformers.SiglipVisionConfig(**vision, vision_use_head=head)
    if layout == "full":
        cfg = transformers.SiglipConfig(vision_config=vcfg.to_dict(), text_config=text or TINY_TEXT)
        full = transformers.SiglipModel(cfg).eval()
        kwargs = {"max_shard_size": shard_size} if shard_size else {}
        full.save_pretrained(path, **kwargs)
        ref = full.vision_model
    else:
        ref = transformers.SiglipVisionModel(vcfg).eval()
        ref.save_pretrained(path)
        if layout == "vision4":
            weights = path / "model.safetensors"
            state = load_file(weights)
            save_file({f"vision_model.{k}": v for k, v in state.items()}, weights, metadata={"format": "pt"})
    if preprocessor:
        size = vision["image_size"]
        SiglipImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3,
                                image_std=[0.5] * 3).save_pretrained(path)
    if tokenizer is not None:
        from spm_files import write_gemma_tokenizer, write_siglip_tokenizer

        (write_siglip_tokenizer if tokenizer == "siglip" else write_gemma_tokenizer)(path)
    return ref


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny")
    build_checkpoint(path, TINY)
    return path


@pytest.fixture(scope="session")
def patch14_full_ckpt(tmp_path_factory):
    """A full SigLIP checkpoint (text tower included), patch 14, head dim 16, sharded."""
    path = tmp_path_factory.mktemp("p14full")
    ref = build_checkpoint(path, PATCH14, layout="full", shard_size="20KB")
    return path, ref


@pytest.fixture(scope="session")
def base_ckpt(tmp_path_factory):
    """The real base config (768 wide, 12 layers), random weights, vision-only."""
    path = tmp_path_factory.mktemp("base")
    ref = build_checkpoint(path, dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                      num_hidden_layers=12, image_size=224, patch_size=16))
    return path, ref


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real `siglip` command in a subprocess (python -m siglip_cli, the same entry point)."""
    full_env = {**os.environ, "NO_COLOR": "1", **(env or {})}
    full_env.pop("SIGLIP_DEBUG", None) if "SIGLIP_DEBUG" not in (env or {}) else None
    return subprocess.run([sys.executable, "-m", "siglip_cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=600)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def run_on_terminal(args: list[str], env: dict) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal (as in a shell) and stdout on a pipe.

    Returns the exit code, what was drawn on the terminal, and stdout.
    """
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "siglip_cli", *args], stdout=subprocess.PIPE, stderr=slave,
                            env=env)
    os.close(slave)
    drawn = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        drawn += chunk
    stdout = proc.stdout.read().decode()
    code = proc.wait(timeout=120)
    os.close(master)
    return code, drawn.decode(errors="replace"), stdout

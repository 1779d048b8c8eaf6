"""Any checkpoint siglip reads (transformers, timm, open_clip, big_vision .npz) -> a Hugging Face transformers
folder, so other tools read what this one reads.

    from siglip_cli.convert import convert
    convert("vit_siglip_timm/", "hf/")   # hf/config.json, model.safetensors, preprocessor_config.json

The weights are loaded strictly into this package's model (whose names are transformers'), then saved
with its state dict: a full checkpoint as SiglipModel, a vision-only one as SiglipVisionModel. The output
folder is written beside its final name and renamed into place when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from . import __version__
from .checkpoint import ModelSource, is_full_checkpoint
from .errors import CheckpointError, OutputError, UsageError
from .tokenizer import TOKENIZER_FILES


def hf_config(config) -> dict:
    """A SiglipConfig as transformers writes config.json: full (both towers) or vision-only."""
    vision = {**config.vision_config.to_dict(), "model_type": "siglip_vision_model"}
    if config.text_config is None:
        return {"architectures": ["SiglipVisionModel"], **vision, "torch_dtype": "float32",
                "converted_by": f"siglip-cli {__version__}"}
    text = {**config.text_config.to_dict(), "model_type": "siglip_text_model"}
    return {"architectures": ["SiglipModel"], "model_type": "siglip", "vision_config": vision, "text_config": text,
            "torch_dtype": "float32", "converted_by": f"siglip-cli {__version__}"}


def convert(source: str | Path | ModelSource, out: str | Path, *, note=None) -> list[str]:
    """Write `source` as a transformers-layout folder `out` (which must not exist, or be empty); returns the
    file names written."""
    from safetensors.torch import save_file

    from .model import SiglipVisionModel
    from .text_model import SiglipModel
    from .weights import load_model, read_any_config

    if not isinstance(source, ModelSource):
        source = ModelSource(Path(source), str(source))
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"output {out} already exists and is not an empty folder: choose a new folder")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"output {out}: its folder {parent} does not exist")
    config = read_any_config(source.path)
    if config.text_config is None and is_full_checkpoint(source.path) and note is not None:
        note(f"Warning: {source.path}: its text tower is not one SigLIP's model can express, so only the vision tower "
             "is converted (siglip classify --model SOURCE names the reason)")
    cls = SiglipVisionModel if config.text_config is None else SiglipModel
    model = load_model(cls, source)
    tokenizer = None
    if cls is SiglipModel:  # the tokenizer travels with the text tower, checked as the text commands check it
        from .text import load_tokenizer

        try:
            tokenizer = load_tokenizer(source, config.text_config, offline=True)
        except CheckpointError as e:
            if note is not None:
                note(f"Warning: no tokenizer written ({e}); add the checkpoint's tokenizer file to {out} for the "
                     "text tower")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    except OSError as e:
        raise OutputError(f"cannot write in {parent}: {e.strerror or e}") from None
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config(config), indent=2) + "\n")
        if model.preprocessor_config is not None:
            prep = {"image_processor_type": "SiglipImageProcessor", **model.preprocessor_config}
            (tmp / "preprocessor_config.json").write_text(json.dumps(prep, indent=2) + "\n")
        if tokenizer is not None:
            folder = tokenizer.path.parent
            for name in TOKENIZER_FILES:
                if (folder / name).is_file() and (name == tokenizer.path.name or name.endswith(".json")):
                    shutil.copyfile(folder / name, tmp / name)
        mask = os.umask(0)
        os.umask(mask)
        for p in tmp.iterdir():  # as any file siglip writes: 0666 - umask (a temp folder starts private)
            p.chmod(0o666 & ~mask)
        tmp.chmod(0o777 & ~mask)
        names = sorted(p.name for p in tmp.iterdir())
        if out.is_dir():
            out.rmdir()  # empty, checked above; a race that filled it makes the rename fail, nothing lost
        os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write {out}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return names

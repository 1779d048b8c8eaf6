"""inspect-shapes: how tensor shapes evolve through SigLIP, traced from a real forward pass.

The model runs on the meta device (shapes and dtypes, no data, no weights), through the explicit
attention path, which records each named intermediate; nothing here computes a shape by formula.
FLOPs are counted as 2 x multiply-adds of the matmul-like stages (elementwise ops are not counted).
The text tower and the image-text scoring (--tower text) are traced by shapes_text.py; reported here.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig, check_image_size
from .model import SiglipVisionModel


@dataclass
class Stage:
    name: str  # the name in the code (trace key, or module path)
    shape: list[int]
    axes: str  # what each axis is
    explain: str
    flops: int | None = None
    group: str = ""


def _layer_explanations(c, t: str = "N") -> dict[str, tuple[str, str]]:
    """Trace name -> (axes, what the step does) for an encoder layer of either tower; t names the token axis."""
    D, h, Dh, F = c.hidden_size, c.num_attention_heads, c.head_dim, c.intermediate_size
    tokens = f"B, {t}, D"
    return {
        "layer_norm1": (tokens, "LayerNorm over D before attention (pre-norm)"),
        "q_states": (tokens, f"q_proj, Linear {D} -> {D}: what each token looks for"),
        "k_states": (tokens, f"k_proj, Linear {D} -> {D}: what each token offers"),
        "v_states": (tokens, f"v_proj, Linear {D} -> {D}: what each token passes on"),
        "split_heads": (f"B, {t}, heads, head dim", f"view D as {h} heads of {Dh} dims (no data moves)"),
        "transpose_heads": (f"B, heads, {t}, head dim", "heads to the front: each head attends on its own"),
        "scores": (f"B, heads, {t}, {t}", f"q @ k^T x scale 1/sqrt({Dh}): every token against every token"),
        "softmax": (f"B, heads, {t}, {t}", "softmax over the last axis: each row of weights sums to 1"),
        "dropout": (f"B, heads, {t}, {t}", f"attention dropout (p = {c.attention_dropout}; a no-op at inference)"),
        "weighted_sum": (f"B, heads, {t}, head dim", "weights @ v: each token becomes a weighted mix of values"),
        "transpose_back": (f"B, {t}, heads, head dim", "tokens to the front again"),
        "merge_heads": (tokens, f"heads concatenated: {h} x {Dh} = {D}"),
        "out_proj": (tokens, f"Linear {D} -> {D}: mixes what the heads found"),
        "residual_add1": (tokens, "x + attention(layer_norm1(x))"),
        "layer_norm2": (tokens, "LayerNorm over D before the MLP"),
        "fc1": (f"B, {t}, F", f"Linear {D} -> {F}: the MLP widens each token"),
        "gelu": (f"B, {t}, F", "GELU (tanh approximation), elementwise"),
        "fc2": (tokens, f"Linear {F} -> {D}: back to the model width"),
        "residual_add2": (tokens, "x + mlp(layer_norm2(x)): the layer's output"),
    }


def _explanations(c: SiglipVisionConfig, grid: tuple[int, int]) -> dict[str, tuple[str, str]]:
    """Trace name -> (what the axes are, what the step does), for a learner."""
    D, h, P = c.hidden_size, c.num_attention_heads, c.patch_size
    N = grid[0] * grid[1]
    tokens = "B, N, D"
    return {
        "patch_embedding": ("B, D, H/P, W/P", f"Conv2d, kernel = stride = {P}: each {P}x{P}x3 patch -> one "
                                              f"{D}-dim vector"),
        "flatten": ("B, D, N", f"the {grid[0]}x{grid[1]} grid flattened into {N} patches"),
        "transpose": (tokens, "one row per patch token (SigLIP has no CLS token)"),
        "add_position_embedding": (tokens, "+ a learned position embedding per patch (broadcast over B)"),
        **_layer_explanations(c),
        "post_layernorm": (tokens, "final LayerNorm: the patch embeddings `siglip embed` writes (--pool none)"),
        "probe": ("B, 1, D", "a learned query, one per image"),
        "attention_weights": ("B, heads, 1, N", f"how much each of the {h} heads looks at each of the {N} patches"),
        "attention": ("B, 1, D", "the probe attends over all patch tokens (multi-head attention)"),
        "pooled": ("B, D", "LayerNorm + MLP with a residual: SigLIP's image embedding (--pool map)"),
    }


def _flops(name: str, shape: list[int], c) -> int | None:
    """2 x multiply-adds of a stage, from the traced output shape and the layer it came from (either tower)."""
    D, F, Dh = c.hidden_size, c.intermediate_size, c.head_dim
    n = math.prod(shape)
    if name == "patch_embedding":
        return 2 * n * c.num_channels * c.patch_size ** 2
    if name in ("q_states", "k_states", "v_states", "out_proj", "fc2"):
        return 2 * n * (F if name == "fc2" else D)
    if name == "fc1":
        return 2 * n * D
    if name == "scores":
        return 2 * n * Dh
    if name == "weighted_sum":  # (B, h, N, N) @ (B, h, N, Dh)
        return 2 * n * shape[-2]
    return None


def _layer_flops(stages: list[Stage]) -> int:
    return sum(s.flops or 0 for s in stages if s.group.startswith("encoder layer"))


def _head_flops(c: SiglipVisionConfig, batch: int, n: int) -> dict[str, int]:
    D, F = c.hidden_size, c.intermediate_size
    return {"attention": 2 * batch * (D * D + 2 * n * D * D + 2 * n * D + D * D),
            "pooled": 2 * batch * 2 * D * F}


def parameter_counts(model: SiglipVisionModel) -> dict[str, int]:
    vm = model.vision_model
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    out = {"embeddings": count(vm.embeddings), "encoder layer (each)": count(vm.encoder.layers[0]),
           f"encoder ({len(vm.encoder.layers)} layers)": count(vm.encoder), "post_layernorm": count(vm.post_layernorm)}
    if model.has_head:
        out["head"] = count(vm.head)
    out["total"] = count(model)
    return out


@dataclass
class ShapeReport:
    config: dict
    summary: dict
    parameters: dict
    stages: list[Stage]
    total_flops: int

    def to_dict(self) -> dict:
        return {"config": self.config, "summary": self.summary, "parameters": self.parameters,
                "stages": [asdict(s) for s in self.stages], "total_flops": self.total_flops}


def _check_layer_and_batch(layer: int, batch_size: int, layers: int, what: str) -> None:
    from .errors import UsageError

    if not 0 <= layer < layers:
        raise UsageError(f"--layer {layer}: {what} has layers 0..{layers - 1}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")


def trace_shapes(config: SiglipVisionConfig, batch_size: int = 1, layer: int = 0, image_size: int | None = None,
                 image_shape: list[int] | None = None, pixels_shape: list[int] | None = None) -> ShapeReport:
    """Run the model on the meta device and record every stage's shape (and FLOPs, and a word on it).

    image_shape/pixels_shape: a real image's decoded [H, W, 3] and preprocessed [3, S, S], when given.
    """
    _check_layer_and_batch(layer, batch_size, config.num_hidden_layers, "this model")
    size = config.image_size if image_size is None else image_size
    check_image_size(size, config)
    with torch.device("meta"):
        model = SiglipVisionModel(config).eval()
        model.use_explicit_attention(True)
        pixels = torch.empty(batch_size, config.num_channels, size, size)
        trace: dict[str, torch.Tensor] = {}
        patches = model.vision_model(pixels, trace=trace, trace_layer=layer)
        head_trace: dict[str, torch.Tensor] = {}
        if model.has_head:
            model.vision_model.head(patches, trace=head_trace)
    grid = tuple(trace["patch_embedding"].shape[-2:])
    words = _explanations(config, grid)
    stages = [Stage("input image", image_shape or [size, size, config.num_channels], "H, W, channels",
                    "the decoded RGB image" + ("" if image_shape else " (any size: it is resized next)"),
                    group="input"),
              Stage("preprocessed pixels", [batch_size, *(pixels_shape or list(pixels.shape[1:]))], "B, C, H, W",
                    f"resized to {size}x{size}, normalised, channels first, batched", group="input")]
    for name, t in trace.items():
        if name == "post_layernorm":
            continue
        group = "embeddings" if name in ("patch_embedding", "flatten", "transpose", "add_position_embedding") \
            else f"encoder layer {layer}"
        stages.append(Stage(name, list(t.shape), *words[name], _flops(name, list(t.shape), config), group))
    others = config.num_hidden_layers - 1
    per_layer = _layer_flops(stages)
    if others:
        stages.append(Stage(f"encoder.layers x{others}", list(trace["residual_add2"].shape), "B, N, D",
                            f"the {others} other layers: the same steps, shape unchanged", per_layer * others,
                            "encoder"))
    stages.append(Stage("post_layernorm", list(trace["post_layernorm"].shape), *words["post_layernorm"],
                        group="encoder"))
    head_flops = _head_flops(config, batch_size, grid[0] * grid[1])
    for name, t in head_trace.items():
        stages.append(Stage(f"head.{name}", list(t.shape), *words[name], head_flops.get(name), "head"))
    c = config
    summary = {"tower": "vision", "B": batch_size, "T": grid[0] * grid[1], "C": c.hidden_size,
               "heads": c.num_attention_heads, "head_dim": c.head_dim, "scale": 1 / math.sqrt(c.head_dim),
               "layers": c.num_hidden_layers, "image_size": size, "patch_size": c.patch_size, "grid": list(grid)}
    return ShapeReport(config.to_dict(), summary, parameter_counts(model), stages,
                       sum(s.flops or 0 for s in stages))


def trace_text_shapes(config: SiglipConfig, batch_size: int = 1, layer: int = 0, images: int | None = None
                      ) -> ShapeReport:
    """The text tower's stages (traced by shapes_text on the meta device) and the scoring of `images` images
    (default shapes_text.SCORING_IMAGES) against the batch_size texts, as a ShapeReport."""
    from .shapes_text import SCORING_IMAGES, text_explanations, text_flops, trace_text

    c = config.part(SiglipTextConfig)  # a vision-only config: a one-line CheckpointError
    _check_layer_and_batch(layer, batch_size, c.num_hidden_layers, "the text tower")
    images = SCORING_IMAGES if images is None else images
    traced = trace_text(config, batch_size, layer, images)
    words = {**_layer_explanations(c, "L"), **text_explanations(c, images)}
    stages: list[Stage] = []
    for name, shape, group in traced.stages:
        flops = _flops(name, shape, c) if group.startswith("encoder layer") else text_flops(name, shape, c)
        stages.append(Stage(name, shape, *words[name], flops, group))
        if name == "residual_add2" and (others := c.num_hidden_layers - 1):
            stages.append(Stage(f"encoder.layers x{others}", shape, "B, L, D", f"the {others} other layers: the "
                                "same steps, shape unchanged", _layer_flops(stages) * others, "other layers"))
    summary = {"tower": "text", "B": batch_size, "L": c.max_position_embeddings, "C": c.hidden_size,
               "E": c.projection_size, "heads": c.num_attention_heads, "head_dim": c.head_dim,
               "scale": 1 / math.sqrt(c.head_dim), "layers": c.num_hidden_layers, "vocab_size": c.vocab_size,
               "images": images}
    return ShapeReport(c.to_dict(), summary, traced.parameters, stages, sum(s.flops or 0 for s in stages))


def _fmt_flops(n: int | None) -> str:
    if not n:
        return ""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def render(report: ShapeReport, console) -> None:
    """One entry per stage: name, shape, axes and FLOPs on a line, the explanation indented below.

    Fits 80 columns, and reads the same when piped to a file.
    """
    from rich.text import Text

    s = report.summary
    text = s.get("tower") == "text"
    attention = (f"C={s['C']}  heads={s['heads']}  head dim={s['head_dim']}  "
                 f"scale=1/sqrt({s['head_dim']})={s['scale']:.4f}  layers={s['layers']}")
    if text:
        texts = f"{s['B']} text{'s' if s['B'] != 1 else ''}"
        console.print(f"SigLIP text tower: B={texts}  L={s['L']} tokens  E={s['E']}  {attention}  "
                      f"vocabulary={s['vocab_size']}; then the scores of {s['images']} images x {texts}")
        console.print("Axes: B texts, L tokens (every text is padded to the full L: the model pools the last "
                      "position, with no mask), D = C hidden size, heads, head dim = D/heads, F MLP size, E "
                      "embedding size; B_img images x B_txt texts in the scoring. FLOPs: 2 x multiply-adds.",
                      style="dim")
    else:
        console.print(f"SigLIP vision tower: B={s['B']}  T={s['T']} tokens ({s['grid'][0]}x{s['grid'][1]} "
                      f"patches of {s['patch_size']} px, {s['image_size']} px image)  {attention}")
        console.print("Axes: B batch, N = T tokens (one per patch), D = C hidden size, heads, head dim = D/heads, "
                      "F MLP size. FLOPs: 2 x multiply-adds.", style="dim")
    # A name longer than 24 (text's token_and_position_embedding) gets a line of its own: the columns fit 80.
    name_w = max(22, *(len(st.name) for st in report.stages if len(st.name) <= 24)) + 2
    shape_w = max(18, *(len(str(st.shape)) for st in report.stages)) + 2
    axes_w = max(len(st.axes) for st in report.stages) + 2
    group = None
    for st in report.stages:
        if st.group != group:
            group = st.group
            console.print(Text(f"\n{group}", style="bold"))
        if len(st.name) > name_w - 2:
            console.print(Text(f"  {st.name}", style="cyan"), no_wrap=True, overflow="ellipsis")
        line = Text(f"  {'' if len(st.name) > name_w - 2 else st.name:<{name_w}}", style="cyan")
        line.append(f"{str(st.shape):<{shape_w}}")
        line.append(f"{st.axes:<{axes_w}}" if st.flops else st.axes, style="dim")
        if st.flops:
            line.append(f"{_fmt_flops(st.flops):>8}")
        console.print(line, no_wrap=True, overflow="ellipsis")
        explain = textwrap.fill(st.explain, max(console.width, 40), initial_indent=" " * 6, subsequent_indent=" " * 6)
        console.print(Text(explain, style="italic"), no_wrap=True, overflow="ignore")  # a hanging indent
    params = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in report.parameters.items())
    console.print(f"\nParameters: {params}")
    if text:
        console.print(f"FLOPs: {_fmt_flops(report.total_flops)} (the texts' forward pass and the scores; the "
                      "images' own pass: --tower vision)")
        console.print("Each (image, text) pair gets its own sigmoid probability: they do not sum to 1 over the "
                      "texts, unlike CLIP's softmax.")
    else:
        console.print(f"FLOPs per forward pass: {_fmt_flops(report.total_flops)}")


MODEL_OR_PRESET = "use either --model or --preset, not both"


TOWERS = ("vision", "text")


def describe(folder: Path | None, preset: str | None, image, batch_size: int = 1, layer: int = 0,
             image_size: int | None = None, tower: str = "vision", texts: list[str] | None = None) -> ShapeReport:
    """inspect-shapes' inputs -> a ShapeReport: the config of a checkpoint folder (config.json only, no
    weights; hub.config_folder finds a hub model's) or a --preset (default: base).

    tower "text": the text tower, then the scores of 2 images (shapes_text.SCORING_IMAGES) against the texts;
    `texts` (only their count matters: nothing is tokenized) set the batch, and `image`/`image_size` are
    refused (they are the vision tower's). The --preset names the vision and text presets of that name.
    """
    from .config import PRESETS
    from .errors import UsageError

    if folder is not None and preset:
        raise UsageError(MODEL_OR_PRESET)
    if tower not in TOWERS:
        raise UsageError(f"--tower {tower!r}: use one of {', '.join(TOWERS)}")
    if tower == "text":
        return _describe_text(folder, preset, image, batch_size, layer, image_size, texts)
    if texts:
        raise UsageError("--text is for --tower text: the vision tower's batch is --batch-size images")
    preprocessor = None
    if folder is not None:
        from .checkpoint import checkpoint_kind, read_preprocessor_config
        from .weights import read_any_config

        config = read_any_config(Path(folder)).vision_config  # any layout; a foreign one's sizes from its tensors
        preprocessor = read_preprocessor_config(Path(folder)) if checkpoint_kind(Path(folder)) == "transformers" \
            else None
    else:
        config = PRESETS[preset or "base"]
    image_shape = pixels_shape = None
    if image is not None:
        from .preprocess import choose_preprocessing, load_image

        decoded = load_image(image)
        prep = choose_preprocessing("auto", preprocessor, config.image_size, image_size)
        image_shape = [decoded.height, decoded.width, 3]
        pixels_shape = list(prep.array(decoded).shape)
        image_size = prep.image_size
    return trace_shapes(config, batch_size, layer, image_size, image_shape, pixels_shape)


def _describe_text(folder, preset, image, batch_size, layer, image_size, texts) -> ShapeReport:
    from .config import PRESETS, TEXT_PRESETS
    from .errors import CheckpointError, UsageError

    for option, value in (("--image", image), ("--image-size", image_size)):
        if value is not None:
            raise UsageError(f"{option} is for the vision tower: --tower text takes texts (--text) or --batch-size")
    if texts:
        if batch_size not in (1, len(texts)):
            raise UsageError(f"--batch-size {batch_size} with {len(texts)} texts: give one or the other "
                             "(the texts' count is the batch)")
        batch_size = len(texts)
    if folder is not None:
        from .weights import read_any_config

        config = read_any_config(Path(folder))
        if config.text_config is None:
            raise CheckpointError(f"{folder}: this checkpoint has no text tower (a vision-only config.json): "
                                  "--tower text needs a full SigLIP checkpoint")
        from .shapes_text import check_scoring

        try:
            check_scoring(config)
        except CheckpointError as e:  # name the folder: the message names only the sizes
            raise CheckpointError(f"{folder}: {e}") from None
    else:
        name = preset or "base"
        if name not in TEXT_PRESETS:
            both = ", ".join(n for n in PRESETS if n in TEXT_PRESETS)
            raise UsageError(f"--preset {name} has no text tower preset (those with one: {both}): use one of "
                             f"them, or --model with a full SigLIP {name} checkpoint")
        config = SiglipConfig(PRESETS[name], TEXT_PRESETS[name])
    return trace_text_shapes(config, batch_size, layer)

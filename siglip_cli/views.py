"""What `siglip download-weights` and `siglip models` print: plain text and one rich table, no logic."""

from __future__ import annotations

from .hub import Downloaded, human_size


def download_summary(done: Downloaded) -> str:
    """The lines a finished download (or --verify) prints on stdout."""
    lines = [f"model:    {done.repo_id}", f"revision: {done.revision}", f"path:     {done.path}",
             f"size:     {human_size(done.size)} in {len(done.files)} files"]
    if done.unverified:
        lines.append(f"checksum: NOT verified: {', '.join(done.unverified)} (no hash from the hub)")
    else:
        lines.append(f"checksum: verified ({len(done.verified)} files)")
    if done.full_checkpoint:
        lines.append("note:     a full SigLIP checkpoint: image and text towers, and the tokenizer "
                     "(classify, search, embed-text)")
    return "\n".join(lines)


MODELS_FOOTNOTE = "params: vision tower; download: full checkpoint (both towers, float32), estimated"


def print_models(rows: list[dict]) -> None:
    """The known checkpoints (catalog.model_rows) as a table on stdout; MODELS_FOOTNOTE goes below it."""
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, collapse_padding=True)
    for name, justify in (("model", "left"), ("width", "right"), ("depth", "right"), ("patch", "right"),
                          ("px", "right"), ("params", "right"), ("download", "right"), ("cached", "left")):
        table.add_column(name, justify=justify, no_wrap=True)
    for r in rows:
        table.add_row(r["id"], str(r["width"]), str(r["depth"]), str(r["patch"]), str(r["resolution"]),
                      f"{r['vision_params'] / 1e6:.0f}M", "~" + human_size(r["download_bytes"]),
                      "yes" if r["cached"] else "")
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # piped to a file or another program: never cut a model id
    console.print(table)

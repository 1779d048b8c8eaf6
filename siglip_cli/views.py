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


LAYOUTS_FOOTNOTE = ("the same weights in timm's and open_clip's layouts, on the hub; siglip reads all three "
                    "(--model timm/...)")


def print_models(rows: list[dict], layouts: bool = False) -> None:
    """The known checkpoints (catalog.model_rows) as a table on stdout; MODELS_FOOTNOTE (or, with layouts, the
    table of where each exists in each layout, and LAYOUTS_FOOTNOTE) goes below it."""
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, collapse_padding=True)
    columns = (("model", "timm", "open_clip") if layouts else
               ("model", "width", "depth", "patch", "px", "params", "download", "cached"))
    for name in columns:
        table.add_column(name, justify="left" if name in ("model", "cached", "timm", "open_clip") else "right",
                         no_wrap=True)
    for r in rows:
        if layouts:
            table.add_row(r["id"], r["timm"], r["open_clip"])
            continue
        table.add_row(r["id"], str(r["width"]), str(r["depth"]), str(r["patch"]), str(r["resolution"]),
                      f"{r['vision_params'] / 1e6:.0f}M", "~" + human_size(r["download_bytes"]),
                      "yes" if r["cached"] else "")
    console = Console()
    if layouts or not console.is_terminal:  # never cut a hub id (a narrow terminal wraps the line instead)
        console = Console(width=max(console.width, 160 if layouts else 120))
    console.print(table)

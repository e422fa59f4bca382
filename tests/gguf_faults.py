"""A GGUF file broken after it is written (two layers' tensors swapped): edited in place by the tests, or put
into the export stage at its start-up (sitecustomize) so that one type's file fails the stage's checks."""

from __future__ import annotations

from pathlib import Path

from benchmarks.check_gguf import swap_layers


def swap_two_layers(path: Path) -> None:
    """Swap blk.0's and blk.1's attention output weights in the file, in place."""
    swap_layers(path, "attn_output.weight")


def break_after_write(kind: str) -> None:
    """Make the export's gguf.write swap two layers in the file of type `kind` once it is written."""
    from finetune.export import gguf

    write = gguf.write

    def write_then_break(this_kind, model_dir, path, name):
        write(this_kind, model_dir, path, name)
        if this_kind == kind:
            swap_two_layers(path)

    gguf.write = write_then_break


def sitecustomize(kind: str) -> str:
    """A sitecustomize.py that breaks `kind`'s file in the process started with BREAK_GGUF set. It unsets it:
    the converter, run by the stage in a child process, starts unpatched."""
    return (
        "import os, sys\n"
        "if os.environ.pop('BREAK_GGUF', None):\n"
        f"    sys.path[:0] = [os.getcwd(), {str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]\n"
        "    import gguf_faults\n"
        f"    gguf_faults.break_after_write({kind!r})\n"
        "    del sys.path[:3]\n"
    )

"""A GGUF file broken after it is written (two layers' tensors swapped): edited in place by the tests, or put
into the export stage at its start-up (sitecustomize) so that one type's file fails the stage's checks."""

from __future__ import annotations

from pathlib import Path


def swap_two_layers(path: Path) -> None:
    """Swap blk.0's and blk.1's attention output weights in the file, in place."""
    import gguf as gguf_py

    reader = gguf_py.GGUFReader(path, "r+")
    first, second = (next(t for t in reader.tensors if t.name == f"blk.{i}.attn_output.weight") for i in (0, 1))
    saved = first.data.copy()
    first.data[...] = second.data
    second.data[...] = saved
    reader.data.flush()


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
        f"    sys.path[:0] = [os.getcwd(), {str(Path(__file__).parent)!r}]\n"
        "    import gguf_faults\n"
        f"    gguf_faults.break_after_write({kind!r})\n"
        "    del sys.path[:2]\n"
    )

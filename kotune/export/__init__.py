"""``kotune export``: a finished run as a standalone model, in the format its runtime reads.

``--format hf`` (:mod:`kotune.export.merged`): a merged transformers folder for vLLM, or the
vLLM LoRA command; ``--format gguf`` (:mod:`kotune.export.to_gguf`): one GGUF file for
llama.cpp and Ollama, with its Modelfile (``--no-merge``: the base and its LoRA adapter as two GGUF files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kotune.errors import KotuneError
from kotune.options import ExportOptions


def export(model: str | Path, options: ExportOptions, *, log=print) -> dict[str, Any]:
    """Export the run in ``model`` as ``options`` say; returns the chosen exporter's result
    (``kind`` says which: "merged", "copied", "lora", "full" or "gguf")."""
    output = Path(options.output) if options.output else None
    if options.format == "gguf":
        if options.dtype != "auto":
            raise KotuneError("--dtype applies to --format hf; a GGUF file's tensor type is --quant")
        from kotune.export.to_gguf import export_gguf

        return export_gguf(model, output, quant=options.quant, merge=options.merge, overwrite=options.overwrite, log=log)
    if options.given("quant"):
        raise KotuneError("--quant applies to --format gguf")
    from kotune.export.merged import export as export_merged

    return export_merged(model, output, merge=options.merge, name=options.name, dtype=options.dtype,
                         overwrite=options.overwrite, log=log)


__all__ = ["export"]

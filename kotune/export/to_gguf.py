"""``kotune export --format gguf``: one GGUF file for llama.cpp and Ollama, and its Modelfile.

The run is merged in full precision (a LoRA/QLoRA adapter folded into its fp32 base; a
full fine-tune loaded as is) and written by :func:`kotune.export.gguf.write_gguf` with
everything the run decided, so llama.cpp prompts and stops as kotune does:

- ``tokenizer.chat_template``: the run template's own Jinja form
  (:meth:`kotune.model.templates.Template.chat_template`), system prompts included;
- the trained EOS ids (every one a stop token in llama.cpp) and pad (≠ EOS);
- the tokenizer: copied from the GGUF file the base came from, converted otherwise;
- ``kotune.run``: the run record, so ``llamacpp:FILE.gguf`` answers in the run's template,
  with its retrieval settings and abstention sentence (:mod:`kotune.model.llamacpp`).

Beside it, ``FILE.Modelfile`` (:mod:`kotune.export.modelfile`) and the two commands that
run it under Ollama. Nothing is half-written: the GGUF goes to a temporary file renamed
into place, the Modelfile after it.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from kotune.errors import KotuneError
from kotune.export.modelfile import modelfile, ollama_name
from kotune.io import atomic_writer
from kotune.model.llamacpp import ADAPTER_KEY, RUN_KEY, gguf_metadata
from kotune.export.merged import load_merged, load_unmerged
from kotune.model.resolve import resolve, source_gguf
from kotune.model.runinfo import RunInfo
from kotune.options import GGUF_QUANT

DEFAULT_QUANT = GGUF_QUANT


def gguf_path(src: Path, output: Path | None, quant: str) -> Path:
    """``-o FILE.gguf`` as given; ``-o DIR`` (an existing folder) or none: ``RUN.QUANT.gguf``
    in that folder or beside the run folder."""
    default_name = f"{src.resolve().name}.{quant}.gguf"
    if output is None:
        return src.resolve().parent / default_name
    if output.is_dir():
        return output / default_name
    if output.suffix.lower() != ".gguf":
        raise KotuneError("a GGUF export is written to a .gguf file (or give an existing folder)", path=output)
    return output


FULL_PRECISION = ("f32", "f16", "bf16", "q8_0")
"""Quants that keep a fine-tuning's small weight changes (8 bits or more)."""


def requantize_warning(source_file_type: int | None, quant: str) -> str | None:
    """The warning for re-quantizing a base that came from a low-bit GGUF to low bits again: the
    base weights sit exactly on that file's grid and a LoRA's changes are mostly smaller than one
    step of a 4-6-bit grid, so rounding puts most weights back where the base had them. Measured
    on Gemma-3-270M (from its Q4_K_M file, policy recipe): q4_k_m lost the tuning (answers never
    stopped, ROUGE-L 84 → 18) while q8_0 kept it (benchmarks/RESULTS.md)."""
    import gguf

    if source_file_type is None or quant in FULL_PRECISION:
        return None
    try:
        source = gguf.LlamaFileType(int(source_file_type)).name.removeprefix("MOSTLY_")
    except ValueError:
        return None
    if source in ("ALL_F32", "F16", "BF16", "Q8_0"):
        return None
    return (f"warning: the base came from a {source} GGUF file; re-quantizing to {quant} rounds most of the "
            "fine-tuning's weight changes back onto the base's grid (measured on Gemma-3-270M: q4_k_m answers "
            "as the untuned base). Export q8_0 or f16, or keep the adapter apart (--no-merge): a 4-bit base with "
            "its LoRA as a second file keeps the tuning.")


def adapter_path(target: Path) -> Path:
    """Where ``--no-merge`` writes the LoRA adapter beside the base ``target``: ``RUN.QUANT.lora.gguf``."""
    return target.with_name(f"{target.stem}.lora.gguf")


def export_gguf(model_dir: str | Path, output: Path | None = None, *, quant: str = DEFAULT_QUANT, merge: bool = True,
                overwrite: bool = False, log=print) -> dict[str, Any]:
    """Write the GGUF file and its Modelfile. Returns ``{"kind", "output", "modelfile", "commands", ...}``.

    ``merge=False`` (a LoRA run) keeps the adapter apart: the base at ``quant`` in ``output``
    (with the run's template, EOS and record, and the adapter's file name) and the adapter in F32
    beside it (:func:`adapter_path`), which llama.cpp (and Ollama's ``ADAPTER``) applies at load.
    A 4-bit base then keeps the tuning: the adapter's changes are not rounded onto the base's grid.
    A base that came from a GGUF file keeps that file's quantized tensors where ``quant`` would
    not make them smaller (write_gguf's ``keep_source_tensors``): the exact base the run trained on."""
    try:
        import gguf  # noqa: F401 - the writer's library, checked before anything loads

        from kotune.export.gguf import QUANTS, write_gguf, write_lora_gguf
    except ImportError as e:
        raise KotuneError(f"GGUF export needs the gguf package: pip install 'kotune[gguf]' ({e})") from None
    src = Path(model_dir)
    run = RunInfo.finished(src, option="--model")
    if quant not in QUANTS:
        raise KotuneError(f"--quant {quant}: not supported; one of {', '.join(QUANTS)}")
    resolved = resolve(str(src), device="cpu", log=log)
    if not merge and not resolved.ref.adapter:
        raise KotuneError("--no-merge keeps a LoRA adapter apart from its base; this run has no adapter "
                          f"({run.method}): export it merged", path=src)
    source = source_gguf(resolved.ref)
    warning = requantize_warning(gguf_metadata(source, ("general.file_type",)).get("general.file_type")
                                 if source else None, quant) if merge else None
    if warning:
        log(warning)
    target = gguf_path(src, output, quant)
    mfile = target.with_suffix(".Modelfile")
    lora = None if merge else adapter_path(target)
    for p in filter(None, (target, mfile, lora)):
        if p.exists() and not overwrite:
            raise KotuneError("already exists (use --overwrite to replace it)", path=p)
    template, tokenizer, eos = resolved.template, resolved.tokenizer, list(resolved.eos_ids)
    if template.needs_context:
        log("note: this grounded run answers from passages; Ollama has no retrieval, so the Modelfile asks questions "
            "without them. kotune chat/eval/serve with llamacpp:FILE.gguf retrieve as the run records.")

    import torch

    pad = tokenizer.pad_token_id
    record = run.exported(src, "gguf", eos, pad)
    metadata = {RUN_KEY: json.dumps(record.to_dict(), ensure_ascii=False)}
    target.parent.mkdir(parents=True, exist_ok=True)
    if merge:
        log(f"loading {run.base_model or resolved.ref.base}" + (" and merging the adapter" if resolved.ref.adapter else "")
            + " in float32 ...")
        model = load_merged(resolved, torch.float32)
    else:
        log(f"loading {run.base_model or resolved.ref.base} and the adapter (kept apart) in float32 ...")
        model = load_unmerged(resolved, torch.float32)
        log(f"writing {lora} (LoRA adapter) ...")
        write_lora_gguf(model, lora, name=f"{src.resolve().name} (LoRA)", log=log)
        model = model.unload()  # the base's own modules back, the adapter dropped (written above)
        metadata[ADAPTER_KEY] = lora.name
    log(f"writing {target} ({quant}{', the base' if lora else ''}) ...")
    info = write_gguf(model, tokenizer, target, quant=quant, chat_template=template.chat_template(tokenizer),
                      eos_ids=eos, pad_id=pad, source_gguf=source, name=src.resolve().name, metadata=metadata,
                      keep_source_tensors=not merge, log=log)
    with atomic_writer(mfile) as f:
        ctx = run.max_length if (run.max_length or 0) > 2048 else None  # Ollama's own default is at least 2048
        f.write(modelfile(target.name, template, tokenizer, eos, context_length=ctx,
                          adapter=lora.name if lora else None))
    name = ollama_name(target.stem)
    commands = [f"ollama create {name} -f {shlex.quote(str(mfile))}", f"ollama run {name}"]
    log(f"eos {eos}, pad {pad}, template {template.name}, tokenizer {info.get('tokenizer')}")
    return {"kind": "gguf", "output": str(target), "modelfile": str(mfile), "commands": commands,
            "llamacpp": f"llamacpp:{target}", "adapter": str(lora) if lora else None,
            **{k: v for k, v in info.items() if k in ("bytes", "types")}}


def prompt_fidelity(file: str | Path, model_dir: str | Path, questions: list[str]) -> list[dict[str, Any]]:
    """Whether llama.cpp prompts as kotune trained, per question: the prompt its chat endpoint
    renders from the GGUF's chat template (``/apply-template``, for the messages a chat client
    sends) is kotune's text, its tokens (``/tokenize`` as the chat endpoint tokenizes: special
    tokens added and parsed) are the training prompt's ids, and a chat request counts as many
    prompt tokens (no doubled BOS)."""
    import httpx

    from kotune.model.llamacpp import start_server
    from kotune.model.templates import encode_prompt

    resolved = resolve(str(model_dir), device="cpu", log=lambda *_: None)
    template, tokenizer = resolved.template, resolved.tokenizer
    server = start_server(Path(file), parallel=1)
    out: list[dict[str, Any]] = []
    try:
        with httpx.Client(base_url=server.listening_address, timeout=120) as client:
            for q in questions:
                messages = template.messages(q)
                rendered = client.post("/apply-template", json={"messages": messages}).json()["prompt"]
                ids = client.post("/tokenize", json={"content": rendered, "add_special": True,
                                                     "parse_special": True}).json()["tokens"]
                usage = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1,
                                                                  "temperature": 0}).json()["usage"]
                text = template.prompt(q, tokenizer=tokenizer)
                want = encode_prompt(tokenizer, text, template)
                bos = tokenizer.bos_token or ""
                out.append({"question": q, "same_text": rendered in (text, text.removeprefix(bos) if bos else text),
                            "same_tokens": ids == want and usage["prompt_tokens"] == len(want),
                            "tokens": len(want)})
    finally:
        del server
    return out


__all__ = ["DEFAULT_QUANT", "adapter_path", "FULL_PRECISION", "export_gguf", "gguf_path", "prompt_fidelity", "requantize_warning"]

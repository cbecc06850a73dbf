"""``kotune export``: a standalone model for vLLM and plain ``transformers``.

``--merge`` (default) folds a LoRA/QLoRA adapter into its base
(``merge_and_unload``) and saves safetensors, the run's tokenizer, a
``generation_config.json`` whose ``eos_token_id`` is the run's EOS ids (so
``generate()`` and vLLM stop where training taught the model to stop), and a
copy of ``kotune.json`` (method ``merged``, template kept) so kotune chat, eval
and serve keep prompting in the training format. The tokenizer's chat template
is replaced by the run template's own (``Template.chat_template``), which renders
the training prompt for the last user message (passages as ``documents``), so
``vllm serve DIR`` chat requests see the prompts the model was trained on.

``--no-merge`` writes nothing (except, with ``-o``, that chat template file)
and prints the ``vllm serve BASE --enable-lora --lora-modules NAME=OUT`` command.
A full fine-tune is copied (model files only, no checkpoints).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

from kotune.errors import KotuneError
from kotune.options import EXPORT_DTYPES
from kotune.model.resolve import Resolved, load_model, resolve
from kotune.model.runinfo import RunInfo
from kotune.model.templates import Template

DTYPES = EXPORT_DTYPES  # the --dtype registry (kotune.options)
SKIP_DIRS = {"checkpoints", "logs", "runs"}


def _check_output(output: Path, source: Path, overwrite: bool) -> None:
    if output.resolve() == source.resolve():
        raise KotuneError("the output folder is the run folder itself; choose another -o", path=output)
    if output.exists():
        if not output.is_dir():
            raise KotuneError("exists and is not a folder", path=output)
        if any(output.iterdir()):
            if not overwrite:
                raise KotuneError("output folder is not empty (use --overwrite to replace it)", path=output)
            if not ((output / "config.json").exists() or (output / "kotune.json").exists()
                    or (output / "chat_template.jinja").exists()):
                raise KotuneError("--overwrite replaces only an earlier export; this folder holds something else",
                                  path=output)


def _replace_dir(tmp: Path, output: Path) -> None:
    if output.exists():
        shutil.rmtree(output)
    os.replace(tmp, output)


def _generation_eos(eos: list[int]) -> int | list[int]:
    return eos[0] if len(eos) == 1 else list(eos)


def _torch_dtype(dtype: str, base_path: str):
    import torch

    if dtype not in DTYPES:
        raise KotuneError(f"unknown --dtype {dtype!r}; one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return getattr(torch, dtype)
    cfg_file = Path(base_path) / "config.json"
    name = None
    if cfg_file.exists():
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        name = cfg.get("dtype") or cfg.get("torch_dtype")
    else:
        try:
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(base_path)
            name = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
        except (OSError, ValueError):
            name = None
    if isinstance(name, str) and name in DTYPES[1:]:
        return getattr(torch, name)
    if name is not None and not isinstance(name, str):
        return name
    return torch.float32


def export(model_dir: str | Path, output: str | Path | None = None, *, merge: bool = True, name: str | None = None,
           dtype: str = "auto", overwrite: bool = False, log=print) -> dict[str, Any]:
    """Export a kotune output. Returns ``{"kind", "output", "command"}`` (output None when nothing was written)."""
    src = Path(model_dir)
    RunInfo.finished(src)  # one error line unless the run finished
    is_adapter = (src / "adapter_config.json").exists()
    is_model = (src / "config.json").exists()
    if not is_adapter and not is_model:
        raise KotuneError("holds no adapter (adapter_config.json) and no model (config.json)", path=src)
    if dtype not in DTYPES:
        raise KotuneError(f"unknown --dtype {dtype!r}; one of {', '.join(DTYPES)}")
    out = Path(output) if output is not None else None
    resolved = resolve(str(src), device="cpu", log=log)  # the run's base, template, EOS, tokenizer, trust
    template = resolved.template

    if not merge:
        return _no_merge(src, out, resolved, is_adapter, name=name, overwrite=overwrite, log=log)
    if out is None:
        raise KotuneError("give -o/--output DIR for the merged model (or --no-merge for a vLLM LoRA command)")
    _check_output(out, src, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        if is_adapter:
            info = _merge(src, tmp, resolved, dtype, log=log)
            kind = "merged"
        else:
            info = _copy_full(src, tmp, resolved, log=log)
            kind = "copied"
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    command = f"vllm serve {shlex.quote(str(out.resolve()))}"
    log(f"eos_token_id {info['eos']}, pad_token_id {info['pad']}, template {template.name}")
    return {"kind": kind, "output": str(out), "command": command}


def _no_merge(src: Path, out: Path | None, resolved: Resolved, is_adapter: bool, *,
              name: str | None, overwrite: bool, log) -> dict[str, Any]:
    if not is_adapter:
        log("a full fine-tune has no adapter: vLLM serves the folder itself")
        return {"kind": "full", "output": None, "command": f"vllm serve {shlex.quote(str(src.resolve()))}"}
    cfg = json.loads((src / "adapter_config.json").read_text(encoding="utf-8"))
    template, base = resolved.template, resolved.ref.base
    lora_name = name or src.resolve().name
    if not lora_name or any(c.isspace() or c == "=" for c in lora_name):
        raise KotuneError(f"--name {lora_name!r}: an adapter name has no spaces or '='")
    parts = ["vllm serve", shlex.quote(base), "--enable-lora", "--lora-modules",
             shlex.quote(f"{lora_name}={src.resolve()}")]
    if resolved.trust_remote_code:
        parts.append("--trust-remote-code")  # trained with it: vLLM needs it to load the architecture too
    rank = int(cfg.get("r") or 0)
    if rank > 16:  # vLLM's default --max-lora-rank is 16
        parts += ["--max-lora-rank", str(rank)]
    if cfg.get("modules_to_save"):
        log(f"warning: the adapter also trains {', '.join(cfg['modules_to_save'])} (modules_to_save), which vLLM's "
            "LoRA serving does not load; export with --merge instead")
    written = None
    jinja = template.chat_template(resolved.tokenizer)
    if jinja is not None:
        if out is not None:
            if out.exists() and not out.is_dir():
                raise KotuneError("exists and is not a folder", path=out)
            target = out / "chat_template.jinja"
            if target.exists() and not overwrite:
                raise KotuneError("already exists (use --overwrite)", path=target)
            out.mkdir(parents=True, exist_ok=True)
            target.write_text(jinja, encoding="utf-8")
            parts += ["--chat-template", shlex.quote(str(target.resolve()))]
            written = str(target)
            log(f"chat template for the {template.name} format → {target}")
        else:
            log(f"note: the run was trained with the {template.name} template; vLLM's chat endpoint would use the base "
                "tokenizer's chat template instead. Give -o DIR to write a matching --chat-template file, or send "
                "/v1/completions with prompts in the training format.")
    return {"kind": "lora", "output": written, "command": " ".join(parts)}


def _save_generation_config(model, eos: list[int], pad: int | None) -> None:
    gc = model.generation_config
    gc.eos_token_id = _generation_eos(eos)
    if pad is not None:
        gc.pad_token_id = pad
        model.config.pad_token_id = pad


def _finish_tokenizer(tokenizer, template: Template) -> None:
    jinja = template.chat_template(tokenizer)
    if jinja is not None:
        tokenizer.chat_template = jinja


def load_merged(resolved: Resolved, torch_dtype):
    """The run's whole model in ``torch_dtype``: its adapter (if any) merged into the base
    (``merge_and_unload``), or a full fine-tune as it is. What every export format writes."""
    import torch

    adapter = resolved.ref.adapter
    with torch.no_grad():
        model = load_model(resolved.ref.base, resolved.load, adapters=[("default", adapter)] if adapter else [],
                           vocab=len(resolved.tokenizer), dtype=torch_dtype)
        if adapter:
            model = model.merge_and_unload()
    return model.eval()


def load_unmerged(resolved: Resolved, torch_dtype):
    """A LoRA run's base in ``torch_dtype`` with its adapter attached, not merged (a ``PeftModel``):
    what a GGUF export that keeps the adapter apart writes, as two files."""
    import torch

    with torch.no_grad():
        model = load_model(resolved.ref.base, resolved.load, adapters=[("default", resolved.ref.adapter)],
                           vocab=len(resolved.tokenizer), dtype=torch_dtype)
    return model.eval()


def _merge(src: Path, dest: Path, resolved: Resolved, dtype: str, log) -> dict[str, Any]:
    run, base, tokenizer = resolved.run, resolved.ref.base, resolved.tokenizer
    torch_dtype = _torch_dtype(dtype, base)
    log(f"merging {src} into {run.base_model or base} ({str(torch_dtype).replace('torch.', '')}) ...")
    model = load_merged(resolved, torch_dtype)
    eos, pad = resolved.eos_ids, tokenizer.pad_token_id
    _save_generation_config(model, eos, pad)
    model.save_pretrained(str(dest))
    _finish_tokenizer(tokenizer, resolved.template)
    tokenizer.save_pretrained(str(dest))
    run.exported(src, "merged", eos, pad).write(dest)
    return {"eos": eos, "pad": pad}


def _copy_full(src: Path, dest: Path, resolved: Resolved, log) -> dict[str, Any]:
    """A full fine-tune (or an earlier export): model files copied, generation config and template set."""
    from transformers import GenerationConfig

    log(f"copying the full model in {src} ...")
    for item in sorted(src.iterdir()):
        if item.is_dir() and (item.name in SKIP_DIRS or item.name.startswith(".")):
            continue
        if item.is_dir():
            shutil.copytree(item, dest / item.name)
        else:
            shutil.copy2(item, dest / item.name)
    tokenizer, run = resolved.tokenizer, resolved.run
    eos, pad = resolved.eos_ids, tokenizer.pad_token_id
    try:
        gc = GenerationConfig.from_pretrained(str(src))
    except OSError:
        gc = GenerationConfig()
    gc.eos_token_id = _generation_eos(eos)
    if pad is not None:
        gc.pad_token_id = pad
    gc.save_pretrained(str(dest))
    _finish_tokenizer(tokenizer, resolved.template)
    tokenizer.save_pretrained(str(dest))
    run.exported(src, run.method or "full", eos, pad).write(dest)
    return {"eos": eos, "pad": pad}

"""A GGUF file answered by llama.cpp, as a model like any other: ``llamacpp:FILE.gguf``.

This is how an exported model is proved (``kotune export --format gguf``): the file is
loaded by llama.cpp itself (the ``xllamacpp`` wheel, llama.cpp's server built as a Python
extension, started in this process on a free local port), and asked through the same
OpenAI-protocol path as any ``openai:`` endpoint (:mod:`kotune.model.endpoint`), so eval,
chat, pairs and the studio take it unchanged, journaled answers included.

The spec is ``llamacpp:FILE.gguf[?mode=completions|chat]``; a bare ``FILE.gguf`` keeps
its other meaning (a base model dequantized into transformers for training). What the
file says of itself decides the rest:

- **a kotune export** carries its run record in the GGUF metadata (``kotune.run``): the
  model answers in the run's template, with its EOS, retrieval and abstention sentence.
  By default kotune renders the prompt and sends it to ``/v1/completions`` (what
  ``kotune eval`` compares token for token with the PyTorch run); ``?mode=chat`` sends
  messages instead, so llama.cpp renders them with the GGUF's own chat template, as
  Ollama and ``llama-server`` users will.
- **any other GGUF** (a community model) is asked in chat mode with its own chat template;
  ``?mode=completions`` renders ``--template`` (or the compared run's) here instead.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kotune.errors import KotuneError
from kotune.model.endpoint import MODES, EndpointModel, EndpointSpec, Probed, endpoint_model
from kotune.model.runinfo import RunInfo
from kotune.model.templates import Template

PREFIX = "llamacpp:"
RUN_KEY = "kotune.run"
"""The GGUF metadata key holding the exported run's record (JSON), written by ``kotune export``."""
ADAPTER_KEY = "kotune.lora_adapter"
"""In a base exported with its LoRA kept apart (``kotune export --format gguf --no-merge``): the
adapter GGUF's file name, beside the base; llama.cpp applies it at load."""
SERVED_NAME = "kotune"
INSTALL = "pip install 'kotune[llamacpp]'"
CONTEXT_PER_SLOT = 4096
"""Tokens of context per parallel request (the prompt plus the answer)."""


def is_llamacpp(spec: str) -> bool:
    return spec.startswith(PREFIX)


@dataclass(frozen=True)
class LlamaCppSpec:
    file: Path
    mode: str | None = None

    @classmethod
    def parse(cls, spec: str) -> "LlamaCppSpec | None":
        """``llamacpp:FILE.gguf[?mode=...]`` → the spec; None for anything else."""
        if not is_llamacpp(spec):
            return None
        path, _, mode = spec[len(PREFIX):].partition("?mode=")
        if not path:
            raise KotuneError(f"{spec}: a llama.cpp model is llamacpp:FILE.gguf")
        if mode and mode not in MODES:
            raise KotuneError(f"{spec}: unknown mode {mode!r}; one of {', '.join(MODES)}")
        return cls(Path(path).expanduser(), mode or None)

    def __str__(self) -> str:
        return f"{PREFIX}{self.file}" + (f"?mode={self.mode}" if self.mode else "")


# ---------------------------------------------------------------- GGUF metadata
# GGUF value types (gguf.GGUFValueType) -> struct format; 8 is STRING, 9 ARRAY
_KV_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_gguf_raw(path: Path) -> tuple[dict[str, tuple[int, int | None, Any]], dict[str, tuple[int, tuple, int]]]:
    """The key/value section of a GGUF file: key -> (value type, array element type, value), strings as
    bytes; and its tensors: name -> (ggml type id, shape rows first, absolute data offset).
    (gguf.GGUFReader takes ~10 s on a 262k-token vocabulary; this reads it in a fraction: every
    ``llamacpp:`` model reads its run record here, and export copies a source tokenizer.)"""
    import mmap
    import struct

    import numpy as np

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", mm, 0)
            if magic != b"GGUF" or version not in (2, 3):
                raise KotuneError("not a little-endian GGUF v2/v3 file", path=path)
            off = 24
            out: dict[str, tuple[int, int | None, Any]] = {}

            def string() -> bytes:
                nonlocal off
                (n,) = struct.unpack_from("<Q", mm, off)
                off += 8 + n
                return mm[off - n:off]

            def scalar(vtype: int):
                nonlocal off
                fmt = _KV_FORMATS[vtype]
                (v,) = struct.unpack_from(fmt, mm, off)
                off += struct.calcsize(fmt)
                return v

            for _ in range(n_kv):
                key = string().decode("utf-8")
                (vtype,) = struct.unpack_from("<I", mm, off)
                off += 4
                if vtype == 9:
                    sub, n = struct.unpack_from("<IQ", mm, off)
                    off += 12
                    if sub == 8:
                        value: Any = [string() for _ in range(n)]
                    elif sub in _KV_FORMATS:
                        dt = np.dtype(_KV_FORMATS[sub].replace("?", "b1"))
                        value = np.frombuffer(mm, dtype=dt, count=n, offset=off).tolist()
                        off += n * dt.itemsize
                    else:
                        raise KotuneError(f"GGUF field {key} is a nested array", path=path)
                    out[key] = (vtype, sub, value)
                elif vtype == 8:
                    out[key] = (vtype, None, string())
                elif vtype in _KV_FORMATS:
                    out[key] = (vtype, None, scalar(vtype))
                else:
                    raise KotuneError(f"GGUF field {key} has unknown type {vtype}", path=path)
            infos = []
            for _ in range(n_tensors):
                name = string().decode("utf-8")
                (n_dims,) = struct.unpack_from("<I", mm, off)
                dims = struct.unpack_from(f"<{n_dims}Q", mm, off + 4)
                qtype, offset = struct.unpack_from("<IQ", mm, off + 4 + 8 * n_dims)
                off += 4 + 8 * n_dims + 12
                infos.append((name, qtype, tuple(reversed(dims)), offset))
            align = out.get("general.alignment", (4, None, 32))[2]
            start = -(-off // align) * align
            return out, {name: (qtype, shape, start + offset) for name, qtype, shape, offset in infos}
    except (OSError, struct.error, ValueError, KeyError, UnicodeDecodeError) as e:
        raise KotuneError(f"cannot read the GGUF file ({type(e).__name__}: {e})", path=path) from None


def gguf_metadata(path: str | Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """The values of ``keys`` in a GGUF file's metadata (strings decoded); missing keys are absent."""
    p = Path(path)
    with open(p, "rb") as f:
        if f.read(4) != b"GGUF":
            raise KotuneError("not a GGUF file (no GGUF magic bytes at its start)", path=p)
    kv = read_gguf_raw(p)[0]
    return {k: v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v
            for k, (_, _, v) in kv.items() if k in keys}


def lora_adapter(path: str | Path) -> Path | None:
    """The LoRA adapter file a kotune export's base names (``ADAPTER_KEY``), checked to exist; None
    when the file is a whole model."""
    name = gguf_metadata(path, (ADAPTER_KEY,)).get(ADAPTER_KEY)
    if name is None:
        return None
    adapter = Path(path).parent / str(name)
    if not adapter.is_file():
        raise KotuneError(f"this base is exported with its LoRA adapter kept apart, and the adapter {name} is not "
                          "beside it (keep the two files together)", path=path)
    return adapter


def exported_run(path: str | Path) -> RunInfo | None:
    """The run record a kotune export wrote into the GGUF file (None for any other GGUF)."""
    raw = gguf_metadata(path, (RUN_KEY,)).get(RUN_KEY)
    if raw is None:
        return None
    try:
        return RunInfo.model_validate(json.loads(raw))
    except (ValueError, TypeError) as e:
        raise KotuneError(f"the kotune.run metadata is broken ({str(e).splitlines()[0]})", path=path) from None


# ---------------------------------------------------------------- the server
def start_server(file: Path, *, parallel: int = 4, context: int = CONTEXT_PER_SLOT, threads: int | None = None,
                 name: str = SERVED_NAME, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None) -> Any:
    """llama.cpp's server in this process, on a free local port unless ``port`` is given
    (``.listening_address``; deleting the object stops it). Chat requests are rendered with the
    GGUF's own Jinja chat template. A base exported with its LoRA kept apart is served with the
    adapter applied (:func:`lora_adapter`)."""
    try:
        import xllamacpp
    except ImportError:
        raise KotuneError(f"running GGUF files needs llama.cpp's Python wheel: {INSTALL}") from None
    adapter = lora_adapter(file)
    params = xllamacpp.CommonParams()
    params.model.path = str(file)
    if adapter is not None:
        lora = xllamacpp.CommonAdapterLoraInfo()
        lora.path, lora.scale = str(adapter), 1.0
        params.lora_adapters = [lora]
    params.n_parallel = max(1, parallel)
    params.n_ctx = context * params.n_parallel  # llama.cpp splits the context between the slots
    params.use_jinja = True  # the file's tokenizer.chat_template, not llama.cpp's built-in guesses
    params.cpuparams.n_threads = threads or os.cpu_count() or 1
    params.cpuparams_batch.n_threads = params.cpuparams.n_threads
    params.model_alias = {name}
    params.hostnames = [host]
    params.port = port
    if api_key:
        params.api_keys = [api_key]
    params.verbosity = 1  # errors only (the default logs every request)
    params.warmup = False
    # llama.cpp says why it cannot load a file only in its log, on the process's stderr (file
    # descriptor 2), and raises "Failed to init server": the log of the start is caught, so the
    # one error line says why.
    with tempfile.TemporaryFile() as caught:
        saved = os.dup(2)
        os.dup2(caught.fileno(), 2)
        try:
            return xllamacpp.Server(params)
        except Exception as e:  # noqa: BLE001 - llama.cpp's failure to start, explained below
            error = str(e).splitlines()[0] if str(e) else type(e).__name__
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        caught.seek(0)
        log = caught.read().decode("utf-8", errors="replace").splitlines()
    why = [line.split(": ", 1)[-1].strip() for line in log if " E " in line[:24]]
    raise KotuneError(f"llama.cpp cannot load this file: {why[0] if why else error}", path=file)


@dataclass
class LlamaCppModel(EndpointModel):
    """An endpoint model whose server is llama.cpp running in this process (module docstring)."""

    file: Path | None = None
    server: Any = None

    def close(self) -> None:
        """Stop the server (the file stays loaded until then)."""
        self.server = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "url": None, "llamacpp": str(self.file)}


def open_llamacpp(name: str, spec: LlamaCppSpec, *, template: str | None, default_template: Template | None,
                  workers: int = 4) -> LlamaCppModel:
    """The llama.cpp model of ``spec``: the file checked, its run read, the server started."""
    file = spec.file
    if not file.exists():
        raise KotuneError(f"model {name}: no such GGUF file", path=file)
    if not file.is_file():
        raise KotuneError(f"model {name}: expected a .gguf file", path=file)
    run = exported_run(file)
    if run is not None and not run.complete:
        raise KotuneError(f"model {name}: the run record in this file is not of a finished run", path=file)
    server = start_server(file, parallel=min(max(1, workers), 4))  # CPU: more slots only share the same cores
    endpoint = EndpointSpec(server.listening_address + "/v1", SERVED_NAME, None, spec.mode)
    # A kotune export is served as trained: kotune renders its prompt (completions), as for
    # a vLLM server named with @RUN; anything else is asked with messages (its own template).
    decided = endpoint_model(Probed(name, endpoint, run, run, False), template=template,
                             default_template=default_template, workers=workers)
    return LlamaCppModel(**{f: getattr(decided, f) for f in decided.__dataclass_fields__}, file=file, server=server)


__all__ = ["ADAPTER_KEY", "LlamaCppModel", "LlamaCppSpec", "PREFIX", "RUN_KEY", "exported_run", "gguf_metadata", "is_llamacpp",
           "lora_adapter", "open_llamacpp", "start_server"]

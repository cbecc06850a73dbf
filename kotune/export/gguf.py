"""A merged transformers causal LM (fp32, in memory) → one GGUF file that llama.cpp loads.

The metadata keys and tensor transforms mirror llama.cpp's own converter
(``convert_hf_to_gguf.py``: ``GPTNeoXModel``, ``LlamaModel``, ``Gemma3Model``), and
which tensor gets which type mirrors ``llama-quantize`` (``src/llama-quant.cpp``:
``tensor_allows_quantization``, ``llama_tensor_get_type_impl``, ``tensor_type_fallback``)
as if it were run on an F32 file written by that converter:

- norms, biases and other 1-D tensors stay F32; every other ``*.weight`` gets the
  quant's type, or its fallback when a row length is not a multiple of the block size
  (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, a 32-block type → F16);
- with a quantized type, ``output.weight`` (or the token embedding when it is tied to
  the output) is Q6_K, or Q8_0 when the quant is Q8_0 or its rows don't fit the block;
- the ``_k_m`` mixes give ``attn_v``/``attn_qkv`` and ``ffn_down`` Q6_K on llama.cpp's
  "use_more_bits" layers.

F16/BF16/Q8_0/Q4_0/Q5_0 are quantized by gguf-py (numpy); the K-quants (Q4_K, Q5_K,
Q6_K) by ggml's own ``ggml_quantize_chunk`` from the llama.cpp library that ships in
``xllamacpp`` (called through ctypes; deterministic and byte-identical to gguf-py on the
types both implement).

Tokenizer: copied from the GGUF file the base came from (Gemma), or converted from a
byte-level BPE ``tokenizers`` tokenizer (``tokenizer.ggml.model = "gpt2"``) whose
pre-tokenizer maps onto one of llama.cpp's (``gpt-2``, ``llama-bpe``, ``qwen2``). The
trained stop ids become llama.cpp's end-of-generation tokens (eos, eot, eom).
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from kotune.errors import KotuneError
from kotune.options import GGUF_QUANTS
from kotune.model.llamacpp import read_gguf_raw

# --quant name -> one-line description
QUANTS: dict[str, str] = {
    "f32": "no quantization (largest; exactly the fp32 weights)",
    "f16": "half precision, norms and biases F32 (llama.cpp's default export)",
    "bf16": "bfloat16, norms and biases F32",
    "q8_0": "8-bit (Q8_0): nearly lossless, about half of f16",
    "q6_k": "6-bit K-quant (Q6_K)",
    "q5_k_m": "5-bit K-quant mix (Q5_K_M: Q6_K for output, some attn_v/ffn_down)",
    "q5_0": "5-bit (Q5_0), output Q6_K/Q8_0",
    "q4_k_m": "4-bit K-quant mix (Q4_K_M, llama.cpp's usual choice: Q6_K for output, some attn_v/ffn_down)",
    "q4_0": "4-bit (Q4_0), output Q6_K/Q8_0",
}

if tuple(QUANTS) != GGUF_QUANTS:  # the command line's --quant choices (kotune.options) are these names
    raise ImportError("kotune.options.GGUF_QUANTS and kotune.export.gguf.QUANTS disagree")

# transformers model_type values this writer converts
ARCHITECTURES: tuple[str, ...] = ("gemma3", "gemma3_text", "gpt_neox", "llama")

_GGUF_ARCH = {"gemma3": "gemma3", "gemma3_text": "gemma3", "gpt_neox": "gptneox", "llama": "llama"}

# llama_ftype and the default tensor type of each quant (llama_ftype_get_default_type)
_FTYPES = {
    "f32": ("ALL_F32", "F32"), "f16": ("MOSTLY_F16", "F16"), "bf16": ("MOSTLY_BF16", "BF16"),
    "q8_0": ("MOSTLY_Q8_0", "Q8_0"), "q6_k": ("MOSTLY_Q6_K", "Q6_K"), "q5_k_m": ("MOSTLY_Q5_K_M", "Q5_K"),
    "q5_0": ("MOSTLY_Q5_0", "Q5_0"), "q4_k_m": ("MOSTLY_Q4_K_M", "Q4_K"), "q4_0": ("MOSTLY_Q4_0", "Q4_0"),
}

# Token texts llama.cpp's vocab loader makes end-of-generation by name (llama-vocab.cpp);
# stop ids among these need no eot/eom slot.
_EOG_BY_NAME = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
}

# The HF pre-tokenizer regexes llama.cpp implements, by tokenizer.ggml.pre name.
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_SPLIT_REGEX_PRE = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
}
_IGNORE_MERGES = {"gpt-2": False, "llama-bpe": True, "qwen2": False}  # as llama-vocab.cpp sets it per pre

# tensor names llama.cpp's converter drops
_SKIP_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")
_SKIP_PREFIXES = ("model.vision_tower.", "vision_tower.", "model.multi_modal_projector.", "multi_modal_projector.")


def write_gguf(model, tokenizer, path: Path, *, quant: str = "f16", chat_template: str | None, eos_ids: list[int],
               pad_id: int | None, source_gguf: Path | None = None, name: str = "",
               metadata: dict[str, str] | None = None, keep_source_tensors: bool = False, log=print) -> dict:
    """Write ``model`` (a transformers PreTrainedModel, LoRA merged) and its ``tokenizer`` to
    ``path`` as GGUF; see the module docstring. Returns {"architecture" (GGUF name), "quant",
    "tensors", "bytes", "tokenizer": "copied"|"converted", "types": {ggml type: count}, "kept": n}.

    ``keep_source_tensors`` (``model`` is the untouched base of ``source_gguf``, as for a LoRA kept
    apart): a quantized tensor of the source file whose type takes no more bits per weight than
    the planned one is copied byte for byte instead of re-quantized. Why: the base weights sit
    on that file's grid; re-quantizing them onto another grid (Q5_0 or Q4_K onto Q8_0) only adds
    error (Gemma-3-270M from its Q4_K_M file, q8_0 base + adapter: ROUGE-L 82.65 vs PyTorch 84.29),
    while the source's own bytes are exactly the base the run was trained on, and smaller."""
    import gguf
    import numpy as np

    t0 = time.time()
    path = Path(path)
    quant = quant.lower()
    if quant not in QUANTS:
        raise KotuneError(f"unknown GGUF quant {quant!r}; one of {', '.join(QUANTS)}")
    arch, spec = _architecture(model.config)  # checks the config before anything is written
    if not eos_ids:
        raise KotuneError("GGUF export needs at least one EOS id")
    if path.is_dir():
        raise KotuneError("is a folder; give the .gguf file to write", path=path)
    ftype = gguf.LlamaFileType[_FTYPES[quant][0]]

    tensors = _tensor_list(model, arch, spec)
    n_vocab = next(t.shape[0] for t in tensors if t.name == "token_embd.weight")
    types = plan_tensor_types([(t.name, t.shape) for t in tensors], quant, arch=arch,
                              n_layer=spec["n_layer"], model_70b=spec.get("model_70b", False))
    if any(_is_k_quant(gguf.GGMLQuantizationType[ty]) for ty in types.values()):
        _ggml()  # fail now, not half-way, when the K-quantizer is missing

    writer = gguf.GGUFWriter(path=None, arch=arch)
    writer.add_type("model")
    if name:
        writer.add_name(name)
    spec["write"](writer)
    writer.add_file_type(int(ftype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    how = _write_tokenizer(writer, tokenizer, n_vocab=n_vocab, source_gguf=source_gguf, eos_ids=list(eos_ids),
                           pad_id=pad_id, chat_template=chat_template, log=log)
    for key, value in (metadata or {}).items():
        if any(key in kv for kv in writer.kv_data):
            raise KotuneError(f"metadata key {key!r} is one the GGUF writer sets itself")
        writer.add_string(key, str(value))

    qtypes = {n: gguf.GGMLQuantizationType[ty] for n, ty in types.items()}
    kept = _source_tensors(Path(source_gguf), tensors, qtypes) if keep_source_tensors and source_gguf else {}
    for n, (qt, _) in kept.items():
        qtypes[n] = qt
        types[n] = qt.name
    for t in tensors:
        qt = qtypes[t.name]
        writer.add_tensor_info(t.name, _byte_shape(t.shape, qt), np.dtype(np.uint8), _nbytes(t.shape, qt),
                               raw_dtype=qt)

    def tensor_data() -> None:
        writer.write_ti_data_to_file()
        for t in tensors:
            data = kept[t.name][1]() if t.name in kept else _quantize(t.load(), qtypes[t.name])
            writer.write_tensor_data(data)
            del data

    _write_atomically(writer, path, tensor_data)
    counts: dict[str, int] = {}
    for ty in types.values():
        counts[ty] = counts.get(ty, 0) + 1
    size = path.stat().st_size
    log(f"wrote {path.name}: {arch}, {quant}, {len(tensors)} tensors "
        f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}), {size / 1e6:.1f} MB, "
        f"tokenizer {how}, {time.time() - t0:.1f} s"
        + (f"; {len(kept)} quantized tensors kept as in {Path(source_gguf).name}" if kept else ""))
    return {"architecture": arch, "quant": quant, "tensors": len(tensors), "bytes": size, "tokenizer": how,
            "types": counts, "kept": len(kept)}


def _source_tensors(source: Path, tensors: list["_Tensor"], planned: dict[str, Any]) -> dict[str, tuple[Any, Callable]]:
    """name -> (source type, loader of its raw bytes) for each quantized tensor of ``source`` with
    the same name and shape whose type takes no more bits per weight than the planned one
    (see write_gguf's ``keep_source_tensors``)."""
    import gguf
    import numpy as np

    T = gguf.GGMLQuantizationType
    _, found = read_gguf_raw(source)

    def bits(qt) -> float:
        block, size = gguf.GGML_QUANT_SIZES[qt]
        return size * 8 / block

    out: dict[str, tuple[Any, Callable]] = {}
    for t in tensors:
        if t.name not in found:
            continue
        type_id, shape, offset = found[t.name]
        qt = T(type_id)
        if qt in (T.F32, T.F16, T.BF16) or tuple(shape) != tuple(t.shape) or bits(qt) > bits(planned[t.name]):
            continue
        def load(offset=offset, shape=t.shape, qt=qt):
            return np.fromfile(source, dtype=np.uint8, count=_nbytes(shape, qt), offset=offset).reshape(
                _byte_shape(shape, qt))

        out[t.name] = (qt, load)
    return out


def write_lora_gguf(model, path: Path, *, name: str = "", log=print) -> dict:
    """A PEFT LoRA adapter → a llama.cpp LoRA adapter GGUF (``general.type = adapter``, as
    llama.cpp's ``convert_lora_to_gguf.py`` writes it), for a base written by :func:`write_gguf`.

    ``model`` is the base with the adapter attached, not merged (a ``PeftModel``). Per adapted
    weight ``W`` (GGUF name ``blk.N.attn_q.weight``, ...) the file holds ``W.lora_a`` [r, in] and
    ``W.lora_b`` [out, r] in F32, ``lora_b`` rows transformed as ``W``'s rows are (GPT-NeoX's
    fused qkv order, Llama's q/k RoPE permutation). PEFT's scaling (alpha/r, rsLoRA, rank and
    alpha patterns) is folded into ``lora_b`` and ``adapter.lora.alpha`` is 0, which llama.cpp
    reads as scale 1. Refused in one line: DoRA, and adapters that also train whole modules
    (``modules_to_save``, e.g. embeddings resized for an added pad): llama.cpp's LoRA has no
    place for them. Returns {"architecture", "tensors", "bytes", "rank"}."""
    import gguf
    import numpy as np
    from peft.tuners.lora import LoraLayer

    t0 = time.time()
    path = Path(path)
    adapter = getattr(model, "active_adapter", "default")
    peft_cfg = model.peft_config[adapter]
    if getattr(peft_cfg, "use_dora", False):
        raise KotuneError("a DoRA adapter has no llama.cpp LoRA form; export it merged (without --no-merge)")
    if getattr(peft_cfg, "modules_to_save", None):
        raise KotuneError(f"the adapter also trains whole modules ({', '.join(peft_cfg.modules_to_save)}), which a "
                          "llama.cpp LoRA file cannot hold; export it merged (without --no-merge)")
    arch, spec = _architecture(model.get_base_model().config)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], spec["n_layer"])
    tensors: list[tuple[str, Any]] = []
    ranks: set[int] = set()
    for module_name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
            continue
        src = _hf_name(module_name.removeprefix("base_model.model.") + ".weight")
        new = tmap.get_name(src, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise KotuneError(f"GGUF export ({arch}) cannot map the adapted module {module_name!r}")
        a = module.lora_A[adapter].weight.detach().float().cpu()
        b = module.lora_B[adapter].weight.detach().float().cpu() * float(module.scaling[adapter])
        ranks.add(a.shape[0])
        tensors.append((f"{new}.lora_a", np.ascontiguousarray(a.numpy(), dtype=np.float32)))
        tensors.append((f"{new}.lora_b", _loader(b, src, arch, spec)()))
    if not tensors:
        raise KotuneError("the adapter adapts no module kotune can map to GGUF")

    writer = gguf.GGUFWriter(path=None, arch=arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    if name:
        writer.add_name(name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)  # scaling folded into lora_b: llama.cpp's scale 1
    for tname, data in tensors:
        writer.add_tensor(tname, data)
    _write_atomically(writer, path, writer.write_tensors_to_file)
    size = path.stat().st_size
    log(f"wrote {path.name}: {arch} LoRA adapter, {len(tensors) // 2} weights, rank {'/'.join(map(str, sorted(ranks)))}, "
        f"F32, {size / 1e6:.1f} MB, {time.time() - t0:.1f} s")
    return {"architecture": arch, "tensors": len(tensors), "bytes": size, "rank": sorted(ranks)}


def _write_atomically(writer, path: Path, tensor_data: Callable[[], None]) -> None:
    """Header, metadata, then ``tensor_data()`` to a temporary file beside ``path`` (same file
    system for ``os.replace``; opened by the writer, so it gets the umask's mode), renamed into
    place: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        tensor_data()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise


def _architecture(cfg) -> tuple[str, dict]:
    """(GGUF architecture, checked spec) of a transformers config; one line for an architecture
    kotune cannot write."""
    model_type = getattr(cfg, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise KotuneError(f"GGUF export does not support architecture {model_type!r}; "
                          f"supported: {', '.join(ARCHITECTURES)}")
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    arch = _GGUF_ARCH[model_type]
    return arch, _ARCH_SPECS[arch](text_cfg)


# ----------------------------------------------------------------------------- architectures
def _get(cfg, *names, default=None):
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def _rope_params(cfg) -> tuple[dict, dict | None]:
    """(global rope parameters, sliding-layer rope parameters or None) for transformers 4 and 5 configs."""
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict) and rp:
        if "full_attention" in rp or "sliding_attention" in rp:
            return dict(rp.get("full_attention") or {}), (dict(rp["sliding_attention"])
                                                          if rp.get("sliding_attention") else None)
        full = dict(rp)
    else:
        full = dict(getattr(cfg, "rope_scaling", None) or {})
    if "rope_type" not in full and "type" in full:
        full["rope_type"] = full["type"]
    theta = _get(cfg, "rope_theta", "rotary_emb_base")
    if theta is not None:
        full.setdefault("rope_theta", theta)
    local = _get(cfg, "rope_local_base_freq")
    return full, ({"rope_theta": local} if local is not None else None)


def _rope_kind(rope: dict, allowed: tuple[str, ...]) -> str:
    kind = str(rope.get("rope_type") or "default").lower()
    if kind not in allowed:
        raise KotuneError(f"GGUF export does not support RoPE type {kind!r} here; supported: {', '.join(allowed)}")
    return kind


def _write_rope_scaling(w, rope: dict, kind: str) -> None:
    import gguf

    if kind == "linear":  # TextModel.set_gguf_parameters
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rope["factor"]))


def _check_act(cfg, allowed: tuple[str, ...], arch: str) -> None:
    act = _get(cfg, "hidden_activation", "hidden_act")
    if act not in allowed:
        raise KotuneError(f"llama.cpp's {arch} uses {allowed[0]}; this model's activation is {act!r}")


def _spec_gptneox(cfg) -> dict:
    """GPTNeoXModel.set_gguf_parameters (+ rope.freq_base, which llama.cpp reads for every arch)."""
    _check_act(cfg, ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh"), "gptneox")
    rope, _ = _rope_params(cfg)
    kind = _rope_kind(rope, ("default", "linear"))
    n_head, hidden = cfg.num_attention_heads, cfg.hidden_size
    pct = rope.get("partial_rotary_factor", _get(cfg, "rotary_pct", "partial_rotary_factor", default=1.0))

    def write(w):
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(hidden)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_rope_dimension_count(int(pct * (hidden // n_head)))
        w.add_head_count(n_head)
        w.add_parallel_residual(bool(_get(cfg, "use_parallel_residual", default=True)))
        w.add_layer_norm_eps(cfg.layer_norm_eps)
        w.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
        _write_rope_scaling(w, rope, kind)

    return {"write": write, "n_layer": cfg.num_hidden_layers, "n_head": n_head, "hidden": hidden}


def _spec_llama(cfg) -> dict:
    """LlamaModel / TextModel.set_gguf_parameters; a llama3 RoPE becomes the rope_freqs tensor."""
    _check_act(cfg, ("silu",), "llama")
    rope, _ = _rope_params(cfg)
    kind = _rope_kind(rope, ("default", "linear", "llama3"))
    n_head = cfg.num_attention_heads
    n_kv = _get(cfg, "num_key_value_heads", default=n_head)
    head_dim = _get(cfg, "head_dim", default=cfg.hidden_size // n_head)

    def write(w):
        w.add_block_count(cfg.num_hidden_layers)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_kv)
        w.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_vocab_size(cfg.vocab_size)
        w.add_rope_dimension_count(head_dim)
        _write_rope_scaling(w, rope, kind)

    extra = []
    if kind == "llama3":  # LlamaModel.generate_extra_tensors
        extra.append(("rope_freqs.weight", _llama3_rope_factors(rope, head_dim)))
    # llama.cpp: 80 layers with grouped KV heads is LLM_TYPE_70B, which llama-quantize treats apart
    return {"write": write, "n_layer": cfg.num_hidden_layers, "n_head": n_head, "n_kv": n_kv, "extra": extra,
            "model_70b": cfg.num_hidden_layers == 80 and n_head != n_kv}


def _llama3_rope_factors(rope: dict, dim: int):
    import math

    import numpy as np

    base = rope.get("rope_theta", 10000.0)
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def _spec_gemma3(cfg) -> dict:
    """Gemma3Model.set_gguf_parameters; llama.cpp's gemma3 graph scales the embeddings by
    sqrt(n_embd) and queries by 1/sqrt(head_dim) itself."""
    _check_act(cfg, ("gelu_pytorch_tanh", "gelu_new", "gelu"), "gemma3")
    if getattr(cfg, "attn_logit_softcapping", None) is not None:
        raise KotuneError("Gemma 3 with attn_logit_softcapping is not a model llama.cpp's gemma3 runs")
    head_dim = _get(cfg, "head_dim", default=256)
    n_layer = cfg.num_hidden_layers
    n_head = _get(cfg, "num_attention_heads", default=8)
    scalar = _get(cfg, "query_pre_attn_scalar", default=head_dim)
    # llama.cpp: 1/sqrt(head_dim), except the 62-layer 27B: 1/sqrt(n_embd/n_head)
    expected = cfg.hidden_size / n_head if n_layer == 62 else head_dim
    if abs(float(scalar) - float(expected)) > 1e-6:
        raise KotuneError(f"Gemma 3 with query_pre_attn_scalar {scalar} (llama.cpp uses {expected:g} for "
                          f"{n_layer} layers) cannot be exported to GGUF")
    full, sliding = _rope_params(cfg)
    kind = _rope_kind(full, ("default", "linear"))
    if sliding and str(sliding.get("rope_type") or "default").lower() != "default":
        raise KotuneError("Gemma 3 with a scaled RoPE on sliding layers cannot be exported to GGUF")
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is None:
        pattern = _get(cfg, "sliding_window_pattern", "_sliding_window_pattern", default=6)
        layer_types = ["full_attention" if pattern == 1 or (i + 1) % pattern == 0 else "sliding_attention"
                       for i in range(n_layer)]
    is_swa = [t == "sliding_attention" for t in layer_types]
    default_pattern = [i % 6 < 5 for i in range(n_layer)]  # llama.cpp's set_swa_pattern(6)

    def write(w):
        w.add_block_count(n_layer)
        w.add_context_length(_get(cfg, "max_position_embeddings", default=131072))
        w.add_embedding_length(cfg.hidden_size)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(n_head)
        w.add_head_count_kv(_get(cfg, "num_key_value_heads", default=4))
        w.add_rope_freq_base(float(full.get("rope_theta", 1_000_000.0)))
        if sliding and sliding.get("rope_theta") is not None:
            w.add_rope_freq_base_swa(float(sliding["rope_theta"]))
        w.add_layer_norm_rms_eps(_get(cfg, "rms_norm_eps", default=1e-6))
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        _write_rope_scaling(w, full, kind)
        if softcap := getattr(cfg, "final_logit_softcapping", None):
            w.add_final_logit_softcapping(float(softcap))
        if any(is_swa):
            w.add_sliding_window(cfg.sliding_window)
            if is_swa != default_pattern:
                w.add_sliding_window_pattern(is_swa)

    return {"write": write, "n_layer": n_layer, "norm_shift": 1.0}


_ARCH_SPECS: dict[str, Callable[[Any], dict]] = {"gptneox": _spec_gptneox, "llama": _spec_llama,
                                                  "gemma3": _spec_gemma3}


# ----------------------------------------------------------------------------- tensors
class _Tensor:
    __slots__ = ("name", "shape", "load")

    def __init__(self, name: str, shape: tuple[int, ...], load: Callable[[], Any]):
        self.name, self.shape, self.load = name, shape, load


def _hf_name(name: str) -> str:
    """Gemma3ForConditionalGeneration's language model under Gemma3ForCausalLM's names."""
    for prefix in ("model.language_model.", "language_model.model."):
        if name.startswith(prefix):
            return "model." + name[len(prefix):]
    if name.startswith("language_model.lm_head."):
        return name[len("language_model."):]
    return name


def _tensor_list(model, arch: str, spec: dict) -> list[_Tensor]:
    """(GGUF name, shape, loader of the final fp32 numpy array) per tensor, in the converter's order."""
    import gguf
    import numpy as np

    n_layer = spec["n_layer"]
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layer)
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    tied = out is not None and out.weight.data_ptr() == inp.weight.data_ptr()
    state = model.state_dict(keep_vars=True)
    result: list[_Tensor] = [_Tensor(n, tuple(a.shape), lambda a=a: a) for n, a in spec.get("extra", [])]
    seen: set[str] = set()
    for hf_name, value in state.items():
        src = _hf_name(hf_name)
        if src.endswith(_SKIP_SUFFIXES) or src.startswith(_SKIP_PREFIXES):
            continue
        new = tmap.get_name(src, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise KotuneError(f"GGUF export ({arch}) cannot map the tensor {hf_name!r}")
        if new == "output.weight" and tied and arch != "gptneox":
            continue  # llama.cpp duplicates token_embd as the output (its gptneox requires output.weight)
        if new in seen:
            continue
        seen.add(new)
        result.append(_Tensor(new, tuple(value.shape), _loader(value, src, arch, spec)))
    if arch == "gptneox":  # llama.cpp requires the biases GPT-NeoX leaves out without attention_bias
        for i in range(n_layer):
            for kind, size in (("attn_qkv", 3 * spec["hidden"]), ("attn_output", spec["hidden"])):
                nm = f"blk.{i}.{kind}.bias"
                if nm not in seen:
                    seen.add(nm)
                    result.append(_Tensor(nm, (size,), lambda size=size: np.zeros(size, dtype=np.float32)))
    if "token_embd.weight" not in seen:
        raise KotuneError(f"GGUF export ({arch}): the model has no token embedding")
    return result


def _loader(value, src: str, arch: str, spec: dict) -> Callable[[], Any]:
    def load():
        import numpy as np

        data = value.detach().to("cpu").float()
        if arch == "gptneox" and src.endswith(".attention.query_key_value.weight"):
            n_head, n_embd = spec["n_head"], spec["hidden"]  # GPTNeoXModel.modify_tensors (rows; any width:
            qkv = data.reshape(n_head, 3, n_embd // n_head, -1)  # a LoRA B matrix has r columns)
            data = qkv.permute(1, 0, 2, 3).reshape(-1, qkv.shape[-1])
        elif arch == "gptneox" and src.endswith(".attention.query_key_value.bias"):
            n_head, n_embd = spec["n_head"], spec["hidden"]
            data = data.reshape(n_head, 3, n_embd // n_head).permute(1, 0, 2).reshape(-1)
        elif arch == "llama" and src.endswith(("q_proj.weight", "q_proj.bias")):
            data = _permute(data, spec["n_head"], spec["n_head"])
        elif arch == "llama" and src.endswith(("k_proj.weight", "k_proj.bias")):
            data = _permute(data, spec["n_head"], spec["n_kv"])
        elif arch == "gemma3" and src.endswith("norm.weight"):
            data = data + spec["norm_shift"]  # Gemma3RMSNorm multiplies by (1 + weight)
        return np.ascontiguousarray(data.numpy(), dtype=np.float32)

    return load


def _permute(weights, n_head: int, n_head_kv: int):
    """LlamaModel.permute: HF's rotate-half q/k rows back to llama.cpp's interleaved RoPE."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


# ----------------------------------------------------------------------------- tensor types
def _category(name: str) -> str:
    """llama-quant.cpp tensor_get_category."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"), ("attn_v.weight", "attn_v"),
                     ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def _allows_quantization(name: str, ndim: int) -> bool:
    """llama-quant.cpp tensor_allows_quantization (the parts that can occur in the architectures here)."""
    if ndim < 2 or not name.endswith("weight") or "_norm.weight" in name:
        return False
    return not any(s in name for s in ("ffn_gate_inp.weight", "altup", "laurel", "per_layer_model_proj",
                                       "position_embd", "token_types", "ssm_conv1d", "attn_rel_b.weight"))


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def plan_tensor_types(tensors: list[tuple[str, tuple[int, ...]]], quant: str, *, arch: str, n_layer: int,
                      model_70b: bool = False) -> dict[str, str]:
    """GGML type name per GGUF tensor (name, numpy shape: rows first), in file order, as
    llama-quantize picks it for ``quant`` from an F32 file (llama_tensor_get_type)."""
    import gguf

    T = gguf.GGMLQuantizationType
    ftype, default_name = _FTYPES[quant]
    default = T[default_name]
    names = [n for n, _ in tensors]
    tied = "output.weight" not in names
    n_attn_v = sum(_category(n) in ("attn_v", "attn_qkv", "attn_kv_b") for n in names)
    i_attn_v = i_ffn_down = 0
    out: dict[str, str] = {}
    for name, shape in tensors:
        ncols = shape[-1]
        if default == T.F32 or not _allows_quantization(name, len(shape)):
            out[name] = "F32"
            continue
        if default in (T.F16, T.BF16):
            out[name] = default.name
            continue
        new = default
        cat = _category(name)
        if cat == "output" or (tied and cat == "token_embd"):
            if arch == "falcon" or ncols % gguf.GGML_QUANT_SIZES[new][0] != 0:
                new = T.Q8_0
            elif new != T.Q8_0:
                new = T.Q6_K
        elif cat in ("attn_v", "attn_qkv", "attn_kv_b"):
            if ftype in ("MOSTLY_Q4_K_M", "MOSTLY_Q5_K_M") and _use_more_bits(i_attn_v, n_attn_v):
                new = T.Q6_K
            if model_70b and new in (T.Q3_K, T.Q4_K):
                new = T.Q5_K
            i_attn_v += 1
        elif cat == "ffn_down":
            if ftype in ("MOSTLY_Q4_K_M", "MOSTLY_Q5_K_M") and _use_more_bits(i_ffn_down, n_layer):
                new = T.Q6_K
            i_ffn_down += 1
        out[name] = _fallback(new, ncols).name
    return out


def _fallback(qtype, ncols: int):
    """llama-quant.cpp tensor_type_fallback."""
    import gguf

    T = gguf.GGMLQuantizationType
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if ncols % block == 0:
        return qtype
    ret = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0, T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0}.get(qtype, qtype)
    if ncols % gguf.GGML_QUANT_SIZES[ret][0] != 0:
        ret = T.F16
    return ret


def _is_k_quant(qtype) -> bool:
    return qtype.name.endswith("_K")


def _byte_shape(shape: tuple[int, ...], qtype) -> tuple[int, ...]:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return (*shape[:-1], shape[-1] // block * size)


def _nbytes(shape: tuple[int, ...], qtype) -> int:
    n = 1
    for d in _byte_shape(shape, qtype):
        n *= d
    return n


def _quantize(data, qtype):
    """fp32 numpy array -> its bytes as ``qtype`` (uint8, rows kept)."""
    import gguf
    import numpy as np

    T = gguf.GGMLQuantizationType
    if qtype == T.F32:
        out = data.astype(np.float32, copy=False)
    elif qtype == T.F16:
        out = data.astype(np.float16)
    elif _is_k_quant(qtype):
        return _ggml_quantize(data, qtype)
    else:
        out = gguf.quants.quantize(data, qtype)
    return np.ascontiguousarray(out).view(np.uint8).reshape(_byte_shape(data.shape, qtype))


_GGML: Any = None


def _ggml():
    """The ggml library inside xllamacpp (ggml_quantize_chunk, for the K-quants)."""
    global _GGML
    if _GGML is None:
        spec = importlib.util.find_spec("xllamacpp")
        found = sorted(glob.glob(str(Path(spec.origin).parent / "xllamacpp*.so"))) if spec and spec.origin else []
        if not found:
            raise KotuneError("K-quant GGUF export needs llama.cpp's quantizer from xllamacpp: pip install xllamacpp "
                              "(or choose q8_0/f16)")
        lib = ctypes.CDLL(found[0])
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                            ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        lib.ggml_row_size.restype = ctypes.c_size_t
        lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        lib.ggml_type_name.restype = ctypes.c_char_p
        lib.ggml_type_name.argtypes = [ctypes.c_int]
        import gguf

        for t in (gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q5_K, gguf.GGMLQuantizationType.Q6_K):
            if (lib.ggml_type_name(int(t)) or b"").decode().lower() != t.name.lower() \
                    or lib.ggml_row_size(int(t), 256) != gguf.GGML_QUANT_SIZES[t][1]:
                raise KotuneError(f"xllamacpp's ggml numbers its types differently from gguf-py ({t.name}); "
                                  "K-quant export is unavailable, choose q8_0/f16")
        _GGML = lib
    return _GGML


def _ggml_quantize(data, qtype):
    import numpy as np

    lib = _ggml()
    x = np.ascontiguousarray(data, dtype=np.float32).reshape(-1, data.shape[-1])
    nrows, n_per_row = x.shape
    out = np.empty((nrows, _byte_shape((n_per_row,), qtype)[0]), dtype=np.uint8)
    row_bytes = out.shape[1]
    step = max(1, min(nrows, (1 << 20) // n_per_row))

    def chunk(start: int) -> int:  # rows are quantized independently: any split gives the same bytes
        n = min(step, nrows - start)
        return lib.ggml_quantize_chunk(int(qtype), x.ctypes.data + start * n_per_row * 4,
                                       out.ctypes.data + start * row_bytes, 0, n, n_per_row, None)

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        written = sum(pool.map(chunk, range(0, nrows, step)))
    if written != out.nbytes:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {out.nbytes}")
    return out.reshape(_byte_shape(data.shape, qtype))


# ----------------------------------------------------------------------------- tokenizer
def _special_behaviour(tokenizer) -> tuple[int | None, bool, bool]:
    """(bos id, add_bos, add_eos) as the HF tokenizer encodes with add_special_tokens=True."""
    probe = "안녕하세요 hello"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    if full == plain:
        return bos, False, False
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), None)
    if start is None or start > 1 or len(full) - len(plain) - start > 1:
        raise KotuneError("the tokenizer adds special tokens llama.cpp cannot reproduce "
                          f"({full[:3]}... around the text)")
    add_bos = start == 1
    add_eos = len(full) - len(plain) - start == 1
    if add_bos:
        bos = full[0]
    if add_eos and full[-1] != eos:
        raise KotuneError(f"the tokenizer appends token {full[-1]} (not its EOS); llama.cpp cannot reproduce that")
    return bos, add_bos, add_eos


def _pre_name(tok_json: dict) -> str:
    """tokenizer.ggml.pre for the tokenizer.json pre-tokenizer (llama-vocab.cpp's regexes)."""
    pre = tok_json.get("pre_tokenizer") or {}
    kind = pre.get("type")
    if kind == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space", False):
        return "gpt-2"
    if kind == "Sequence":
        parts = pre.get("pretokenizers") or []
        if (len(parts) == 2 and parts[0].get("type") == "Split" and parts[1].get("type") == "ByteLevel"
                and not parts[1].get("use_regex", True) and not parts[1].get("add_prefix_space", False)
                and parts[0].get("behavior") == "Isolated" and not parts[0].get("invert", False)):
            regex = (parts[0].get("pattern") or {}).get("Regex")
            if regex in _SPLIT_REGEX_PRE:
                return _SPLIT_REGEX_PRE[regex]
            raise KotuneError(f"GGUF export: no llama.cpp pre-tokenizer matches the Split regex {regex!r}")
    described = kind if kind != "ByteLevel" else f"ByteLevel({pre})"
    raise KotuneError(f"GGUF export: the tokenizer's pre-tokenizer {described} has no llama.cpp equivalent "
                      "(supported: GPT-2 ByteLevel, Llama-3 and Qwen2 Split+ByteLevel)")


def _convert_bpe(writer, tokenizer, n_vocab: int) -> None:
    """A byte-level BPE ``tokenizers`` tokenizer as tokenizer.ggml.model "gpt2" (TextModel._set_vocab_gpt2)."""
    import json

    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise KotuneError("GGUF export converts only fast (tokenizers) byte-level BPE tokenizers; "
                          "give the base model's GGUF file as source to copy its tokenizer")
    tj = json.loads(backend.to_str())
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise KotuneError(f"GGUF export: a {model.get('type')} tokenizer"
                          f"{' with byte fallback (SentencePiece-style)' if model.get('byte_fallback') else ''} "
                          "cannot be converted; give the base model's GGUF file as source to copy its tokenizer")
    if tj.get("normalizer") is not None:
        raise KotuneError(f"GGUF export: the tokenizer's normalizer {tj['normalizer'].get('type')} has no "
                          "llama.cpp equivalent for byte-level BPE")
    pre = _pre_name(tj)
    if bool(model.get("ignore_merges", False)) != _IGNORE_MERGES[pre]:
        raise KotuneError(f"GGUF export: ignore_merges={model.get('ignore_merges')} differs from llama.cpp's "
                          f"{pre!r} pre-tokenizer")
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise KotuneError(f"the tokenizer has ids up to {max(vocab.values())} but the model only {n_vocab} "
                          "embedding rows")
    reverse = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tok = reverse[i]
        if i in added:
            if added[i].special or _looks_special(tok):
                types.append(gguf.TokenType.CONTROL)
            else:
                tok = tok.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(tok)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if merges:
        writer.add_token_merges(merges)


def _looks_special(tok: str) -> bool:
    """TextModel.does_token_look_special."""
    return (tok in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (tok.startswith("<|") and tok.endswith("|>"))
            or (tok.startswith("<｜") and tok.endswith("｜>")) or (tok.startswith("<unused") and tok.endswith(">")))


_ID_KEYS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id",
            "tokenizer.ggml.padding_token_id", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.add_eos_token")


def _copy_tokenizer(writer, source: Path, n_vocab: int) -> list[str] | None:
    """Copy the tokenizer.* fields (except chat templates and the ids set from the arguments) of the
    source GGUF; None when its vocabulary does not fit the model. Returns the token texts."""
    import gguf

    kv = _read_kv(source)
    tokens = kv.get("tokenizer.ggml.tokens")
    if tokens is None or len(tokens[2]) != n_vocab:
        return None
    for key, (vtype, sub, value) in kv.items():
        if key.startswith("tokenizer.") and not key.startswith("tokenizer.chat_template") and key not in _ID_KEYS:
            writer.add_key_value(key, value, gguf.GGUFValueType(vtype),
                                 sub_type=gguf.GGUFValueType(sub) if sub is not None else None)
    return [t.decode("utf-8", errors="replace") for t in tokens[2]]


def _read_kv(path: Path) -> dict[str, tuple[int, int | None, Any]]:
    return read_gguf_raw(path)[0]


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A GGUF file's metadata (strings decoded, arrays as lists) and tensors (name -> {"type": ggml
    type name, "shape": rows first, "offset": of its data in the file}), e.g. to check an export."""
    import gguf

    def text(v):
        return v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v

    kv, tensors = read_gguf_raw(Path(path))
    meta = {k: [text(x) for x in v] if isinstance(v, list) else text(v) for k, (_, _, v) in kv.items()}
    return meta, {n: {"type": gguf.GGMLQuantizationType(t).name, "shape": shape, "offset": off}
                  for n, (t, shape, off) in tensors.items()}


def _write_tokenizer(writer, tokenizer, *, n_vocab: int, source_gguf: Path | None, eos_ids: list[int],
                     pad_id: int | None, chat_template: str | None, log) -> str:
    texts = None
    if source_gguf is not None:
        texts = _copy_tokenizer(writer, Path(source_gguf), n_vocab)
        if texts is None:
            log(f"the tokenizer of {Path(source_gguf).name} does not have the model's {n_vocab} tokens; converting "
                "the model's own tokenizer instead")
    how = "copied" if texts is not None else "converted"
    if texts is None:
        _convert_bpe(writer, tokenizer, n_vocab)
        vocab = tokenizer.get_vocab()
        reverse = {i: t for t, i in vocab.items()}
        texts = [reverse.get(i, "") for i in range(n_vocab)]
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is not None:
            writer.add_unk_token_id(unk)
    bos, add_bos, add_eos = _special_behaviour(tokenizer)
    if bos is not None:
        writer.add_bos_token_id(bos)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    stops = list(dict.fromkeys(int(i) for i in eos_ids))
    bad = [i for i in stops if not 0 <= i < n_vocab]
    if bad:
        raise KotuneError(f"EOS id {bad[0]} is outside the vocabulary of {n_vocab} tokens")
    if add_eos and getattr(tokenizer, "eos_token_id", None) not in (None, stops[0]):
        raise KotuneError(f"the tokenizer appends {tokenizer.eos_token_id} but the first EOS id is {stops[0]}: "
                          "llama.cpp appends its EOS id")
    writer.add_eos_token_id(stops[0])
    # llama.cpp's end-of-generation set: eos, eot, eom and tokens it knows by name.
    rest = stops[1:]
    unnamed = [i for i in rest if texts[i] not in _EOG_BY_NAME]
    slots = unnamed + [i for i in rest if i not in unnamed]
    if len(unnamed) > 2:
        raise KotuneError(f"llama.cpp can stop on at most 3 EOS ids of unknown names; got {len(stops)} "
                          f"({', '.join(repr(texts[i]) for i in stops)})")
    if slots:
        writer.add_eot_token_id(slots[0])
    if len(slots) > 1:
        writer.add_eom_token_id(slots[1])
    if pad_id is not None and int(pad_id) != stops[0]:
        if not 0 <= int(pad_id) < n_vocab:
            raise KotuneError(f"pad id {pad_id} is outside the vocabulary of {n_vocab} tokens")
        writer.add_pad_token_id(int(pad_id))
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    return how

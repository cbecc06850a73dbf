"""kotune.export.gguf: transformers causal LMs written as GGUF that llama.cpp (xllamacpp, its
server running in-process) loads and answers with like transformers: the same token ids for
the same text, the same greedy continuations, the trained stop ids ending generation, and
the chat template round-tripping. Plus: llama-quantize's tensor types (checked against the
Q4_K_M file Gemma ships as), one-line errors and no half-written file."""

from __future__ import annotations

import contextlib
import json
import urllib.request
from pathlib import Path

import pytest

from kotune.errors import KotuneError

import gguf  # noqa: E402 - the test extra installs gguf, xllamacpp and the Gemma weights

PROMPTS = [
    "### 지시\n보험금 청구 기한은?\n\n### 출력\n",
    "### 지시\n계약을 해지하면 환급금은 어떻게 계산하나요?\n\n### 출력\n",
    "### 지시\n개인정보 보호법의 목적을 설명하세요.\n\n### 출력\n",
    "대한민국의 수도는",
    "보험 계약자는 ",
    "법률 제3조에 따르면",
    "오늘 날씨가 좋아서",
    "정부는 내년 예산안을",
    "### 사용자\n안녕하세요\n\n### 어시스턴트\n",
    "백과사전에 따르면 한글은 1443년",
]
N_NEW = 16
TEMPLATE = ("{{ bos_token }}{% for m in messages %}### {{ m['role'] }}\n{{ m['content'] }}\n\n{% endfor %}"
            "{% if add_generation_prompt %}### 출력\n{% endif %}")


# ----------------------------------------------------------------------------- helpers
def _post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


@contextlib.contextmanager
def llama_server(path: Path):
    """llama.cpp's HTTP server on ``path``, in this process (one slot), as ``llamacpp:`` models start it."""
    from kotune.model.llamacpp import start_server

    server = start_server(path, parallel=1, context=512)
    try:
        yield server.listening_address
    finally:
        del server


def llama_tokens(base: str, text: str) -> list[int]:
    return _post(base, "/tokenize", {"content": text, "add_special": True})["tokens"]


def llama_greedy(base: str, ids: list[int], n: int = N_NEW, **extra) -> dict:
    """llama.cpp's greedy continuation of token ids (no re-tokenisation); "tokens" includes a stop token."""
    return _post(base, "/completion", {"prompt": ids, "n_predict": n, "temperature": 0, "return_tokens": True,
                                       "cache_prompt": False, **extra})


def hf_greedy(model, ids: list[int], stops: list[int], n: int = N_NEW) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, eos_token_id=stops, pad_token_id=stops[0])
    return out[0, len(ids):].tolist()


def compare(model, tokenizer, base: str, stops: list[int], prompts=PROMPTS) -> list[dict]:
    """Per prompt: HF and llama.cpp token ids of the text, and both greedy continuations."""
    rows = []
    for text in prompts:
        ids = tokenizer(text)["input_ids"]
        hf = hf_greedy(model, ids, stops)
        rows.append({"text": text, "ids": ids, "llama_ids": llama_tokens(base, text), "hf": hf,
                     "llama": llama_greedy(base, ids)["tokens"]})
    return rows


def first_divergence_margin(model, row: dict) -> float:
    """transformers' logit lead of its own greedy token over llama.cpp's at their first difference."""
    import torch

    k = next(i for i, (a, b) in enumerate(zip(row["hf"], row["llama"])) if a != b)
    with torch.no_grad():
        logits = model(torch.tensor([row["ids"] + row["hf"][:k]])).logits[0, -1]
    return float(logits[row["hf"][k]] - logits[row["llama"][k]])


def assert_equal_or_near_ties(model, rows: list[dict], tolerance: float, min_equal: float) -> None:
    """Every greedy continuation equals transformers', or parts only where transformers' own two
    candidates are within ``tolerance`` logits (f32: accumulation-order rounding; quants: their
    noise); at least ``min_equal`` of them are equal throughout."""
    equal = [r["llama"] == r["hf"] for r in rows]
    margins = [first_divergence_margin(model, r) for r, same in zip(rows, equal) if not same]
    assert sum(equal) >= min_equal * len(rows) and all(m < tolerance for m in margins), (equal, margins)


# ----------------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kotune.model.loading import ensure_tiny_ko

    d = ensure_tiny_ko()
    return AutoModelForCausalLM.from_pretrained(d).float().eval(), AutoTokenizer.from_pretrained(d)


@pytest.fixture(scope="module")
def tiny_f32(tiny, tmp_path_factory) -> tuple[Path, dict]:
    """tiny-ko (GPT-NeoX, byte-level BPE) as f32; ``<|sep|>`` (id 2) as a second stop id."""
    from transformers import AutoTokenizer  # noqa: F401 - the fixture above imports transformers

    from kotune.export.gguf import write_gguf

    model, tok = tiny
    path = tmp_path_factory.mktemp("gguf-tiny") / "tiny-f32.gguf"
    info = write_gguf(model, tok, path, quant="f32", chat_template=TEMPLATE, eos_ids=[tok.eos_token_id, 2],
                      pad_id=tok.pad_token_id, name="tiny-ko", metadata={"kotune.run": '{"method": "lora"}'},
                      log=lambda *a: None)
    return path, info


@pytest.mark.e2e
def test_tiny_ko_f32_tokenizes_and_answers_exactly_like_transformers(tiny, tiny_f32):
    model, tok = tiny
    path, info = tiny_f32
    assert info["architecture"] == "gptneox" and info["tokenizer"] == "converted"
    assert info["types"] == {"F32": info["tensors"]} and info["bytes"] == path.stat().st_size
    with llama_server(path) as base:
        rows = compare(model, tok, base, [tok.eos_token_id, 2])
    assert [r["llama_ids"] for r in rows] == [r["ids"] for r in rows]
    assert_equal_or_near_ties(model, rows, tolerance=0.01, min_equal=0.9)


@pytest.mark.e2e
def test_tiny_ko_q8_0_and_q4_k_m_stay_close(tiny, tmp_path):
    from kotune.export.gguf import write_gguf

    model, tok = tiny
    agree = {}
    for quant in ("q8_0", "q4_k_m"):
        path = tmp_path / f"tiny-{quant}.gguf"
        info = write_gguf(model, tok, path, quant=quant, chat_template=None, eos_ids=[tok.eos_token_id],
                          pad_id=tok.pad_token_id, log=lambda *a: None)
        with llama_server(path) as base:
            rows = compare(model, tok, base, [tok.eos_token_id])
        assert [r["llama_ids"] for r in rows] == [r["ids"] for r in rows]
        agree[quant] = sum(r["llama"] == r["hf"] for r in rows) / len(rows)
        if quant == "q4_k_m":
            # hidden 192 is no multiple of 256: Q4_K falls back to Q5_0, Q6_K to Q8_0; ffn_down (768) keeps K-quants
            assert set(info["types"]) == {"F32", "Q5_0", "Q8_0", "Q4_K", "Q6_K"}
            again = tmp_path / "again.gguf"
            write_gguf(model, tok, again, quant=quant, chat_template=None, eos_ids=[tok.eos_token_id],
                       pad_id=tok.pad_token_id, log=lambda *a: None)
            assert again.read_bytes() == path.read_bytes()  # ggml's K-quantizer is deterministic
    assert agree["q8_0"] >= 0.8, agree


def _random_model(kind: str, tok):
    """Small random models (seed 0, weights scaled up so greedy text is not constant) over tiny-ko's tokenizer."""
    import torch
    from transformers import (Gemma3Config, Gemma3ForCausalLM, Gemma3ForConditionalGeneration, Gemma3TextConfig,
                              GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM, SiglipVisionConfig)

    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id, max_position_embeddings=512, initializer_range=0.2)
    small = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4)
    llama3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    torch.manual_seed(0)
    if kind == "llama":  # GQA: 4 heads, 2 KV heads
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, num_key_value_heads=2, **small, **ids))
    elif kind == "llama-tied-llama3-rope":  # no output.weight; rope_freqs tensor
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, num_key_value_heads=2, tie_word_embeddings=True,
                                             rope_parameters=llama3, **small, **ids))
    elif kind == "llama-linear-rope-bias":
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, num_key_value_heads=1, attention_bias=True,
                                             rope_parameters={"rope_type": "linear", "rope_theta": 10000.0,
                                                              "factor": 4.0}, **small, **ids))
    elif kind == "gpt_neox-sequential-no-attention-bias":  # llama.cpp's required attention biases written as zeros
        model = GPTNeoXForCausalLM(GPTNeoXConfig(num_hidden_layers=2, use_parallel_residual=False, attention_bias=False,
                                                 rotary_pct=0.25, rotary_emb_base=500.0, **small, **ids))
    else:
        text = Gemma3TextConfig(num_hidden_layers=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                                sliding_window=4, **small, **ids)
        if kind == "gemma3_text-pattern-softcap":  # a layer pattern other than llama.cpp's default (5 sliding : 1)
            text = Gemma3TextConfig(num_hidden_layers=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                                    sliding_window=4, final_logit_softcapping=5.0,
                                    layer_types=["sliding_attention", "full_attention"] * 2, **small, **ids)
            model = Gemma3ForCausalLM(text)
        else:  # gemma3: the language model inside Gemma3ForConditionalGeneration (vision tower left out)
            vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=28, patch_size=14)
            model = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                                                mm_tokens_per_image=4, image_token_index=3,
                                                                boi_token_index=2, eoi_token_index=2))
        with torch.no_grad():  # norms are stored +1 in GGUF: make them matter
            for n, p in model.named_parameters():
                if n.endswith("norm.weight"):
                    p.normal_(0, 0.3)
    return model.eval()


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["llama", "llama-tied-llama3-rope", "llama-linear-rope-bias",
                                  "gpt_neox-sequential-no-attention-bias", "gemma3_text-pattern-softcap", "gemma3"])
def test_random_models_f32_answer_like_transformers(kind, tiny, tmp_path):
    """Llama's q/k permutation for llama.cpp's RoPE, GQA, tied embeddings, RoPE scaling, Gemma 3's
    shifted norms, 4-token sliding window and layer pattern: f32 answers as transformers does."""
    from kotune.export.gguf import read_gguf, write_gguf

    _, tok = tiny
    model = _random_model(kind, tok)
    path = tmp_path / "model.gguf"
    info = write_gguf(model, tok, path, quant="f32", chat_template=None, eos_ids=[tok.eos_token_id],
                      pad_id=tok.pad_token_id, log=lambda *a: None)
    assert info["architecture"] == kind.split("-")[0].replace("_text", "").replace("gpt_neox", "gptneox")
    _, tensors = read_gguf(path)
    assert ("output.weight" in tensors) == (kind in ("llama", "llama-linear-rope-bias") or "neox" in kind)
    assert ("rope_freqs.weight" in tensors) == (kind == "llama-tied-llama3-rope")
    with llama_server(path) as base:
        rows = compare(model, tok, base, [tok.eos_token_id])
    assert [r["llama_ids"] for r in rows] == [r["ids"] for r in rows]
    # seed 0, "llama": 9 of 10 equal; one parts where transformers' top two logits differ by 0.002
    assert_equal_or_near_ties(model, rows, tolerance=0.01, min_equal=0.9)
    assert len({tuple(r["hf"]) for r in rows}) > 5  # the random model does not answer one constant string


@pytest.mark.e2e
def test_chat_template_metadata_and_stop_ids(tiny, tiny_f32):
    import jinja2

    _, tok = tiny
    from kotune.export.gguf import read_gguf

    path, _ = tiny_f32
    fields, _ = read_gguf(path)
    assert fields["tokenizer.chat_template"] == TEMPLATE
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.eos_token_id"] == tok.eos_token_id and fields["tokenizer.ggml.eot_token_id"] == 2
    assert fields["tokenizer.ggml.padding_token_id"] == tok.pad_token_id
    assert fields["tokenizer.ggml.add_bos_token"] is False  # tiny-ko's encoding adds no BOS
    assert fields["kotune.run"] == '{"method": "lora"}' and fields["general.name"] == "tiny-ko"
    messages = [{"role": "user", "content": "보험금 청구 기한은?"}]
    expected = jinja2.Template(TEMPLATE).render(messages=messages, bos_token=tok.bos_token, eos_token=tok.eos_token,
                                                add_generation_prompt=True)
    with llama_server(path) as base:
        assert _post(base, "/apply-template", {"messages": messages})["prompt"] == expected
        ids = tok("보험 계약자는")["input_ids"]
        for stop in (tok.eos_token_id, 2):  # forced as the next token, each one ends generation
            r = llama_greedy(base, ids, 8, logit_bias=[[stop, 100.0]])
            assert r["tokens"] == [stop] and r["stop_type"] == "eos"
        r = llama_greedy(base, ids, 8, logit_bias=[[3, 100.0]])  # <|unk|> is no stop
        assert r["tokens"] == [3] * 8 and r["stop_type"] == "limit"


LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")
TRICKY = ["I've been 'told he's there, 'RE you sure? 3333 33 3.14 1234567", "\n \n\n \t\t  x   \n",
          "🚀 (normal) 😶‍🌫️ ✅ 🦙🦙", "Hello World! HELLO   world\r\n\r\nok", "가나다 123 abc ABC"]


def _split_bpe_tokenizer(regex: str, ignore_merges: bool):
    """A Llama-3-style tokenizer (Split regex + ByteLevel without regex, BOS added) trained on the corpus."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from kotune.model.loading import corpus_texts

    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus_texts() + TRICKY * 20, trainer=trainers.BpeTrainer(
        vocab_size=3000, special_tokens=["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")


@pytest.mark.e2e
@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2"])
def test_split_regex_tokenizers_convert_to_llama_cpp_pre_tokenizers(pre, tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kotune.export.gguf import read_gguf, write_gguf

    tok = _split_bpe_tokenizer(LLAMA3_REGEX if pre == "llama-bpe" else QWEN2_REGEX, ignore_merges=pre == "llama-bpe")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=4, vocab_size=len(tok), bos_token_id=0, eos_token_id=1))
    path = tmp_path / "model.gguf"
    write_gguf(model, tok, path, quant="f32", chat_template=None, eos_ids=[1, 2], pad_id=None, log=lambda *a: None)
    meta, _ = read_gguf(path)
    assert meta["tokenizer.ggml.pre"] == pre and meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["tokenizer.ggml.bos_token_id"] == 0 and meta["tokenizer.ggml.eot_token_id"] == 2
    with llama_server(path) as base:
        assert [llama_tokens(base, t) for t in PROMPTS + TRICKY] == [tok(t)["input_ids"] for t in PROMPTS + TRICKY]


def test_a_pre_tokenizer_llama_cpp_lacks_is_one_error(tmp_path):
    import torch
    from tokenizers import pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    from kotune.export.gguf import write_gguf

    tok = _split_bpe_tokenizer(r"\p{L}+|\p{N}+|\s+|[^\s\p{L}\p{N}]+", ignore_merges=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=len(tok)))
    path = tmp_path / "model.gguf"
    with pytest.raises(KotuneError, match="no llama.cpp pre-tokenizer matches the Split regex"):
        write_gguf(model, tok, path, quant="f32", chat_template=None, eos_ids=[1], pad_id=None)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    with pytest.raises(KotuneError, match="Metaspace has no llama.cpp equivalent"):
        write_gguf(model, tok, path, quant="f32", chat_template=None, eos_ids=[1], pad_id=None)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- Gemma 3
@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """Gemma 3 270M (transformers, fp32) written as q8_0 with the tokenizer of the GGUF it came from."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kotune.export.gguf import write_gguf
    from kotune.model.loading import ensure_gemma, gemma_gguf_file

    source = gemma_gguf_file(log=lambda *a: None)
    d = ensure_gemma(log=lambda *a: None)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(d)
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    path = tmp_path_factory.mktemp("gguf-gemma") / "gemma-q8_0.gguf"
    info = write_gguf(model, tok, path, quant="q8_0", chat_template=None, eos_ids=[tok.eos_token_id, eot],
                      pad_id=tok.pad_token_id, source_gguf=source, log=lambda *a: None)
    return model, tok, path, info, source, eot


@pytest.mark.e2e
def test_gemma_q8_0_matches_transformers(gemma):
    """Same token ids; greedy continuations equal, or parting only where transformers itself nearly
    ties (Q8_0 weights and llama.cpp's Q8_0 activations move logits by a few hundredths; the base
    model has many near-ties)."""
    model, tok, path, info, _, eot = gemma
    assert info["architecture"] == "gemma3" and info["tokenizer"] == "copied"
    assert info["types"] == {"F32": 109, "Q8_0": 127}  # norms F32; no output.weight (tied)
    with llama_server(path) as base:
        rows = compare(model, tok, base, [tok.eos_token_id, eot], PROMPTS[:4])
    assert [r["llama_ids"] for r in rows] == [r["ids"] for r in rows]
    # measured on all ten prompts: 5 equal, the others part at margins 0.003-0.34 (f16: 10 of 10 equal, and
    # the tuned Gemma run's 16 test answers identical in f16: benchmarks/bench_gguf.py)
    assert_equal_or_near_ties(model, rows, tolerance=0.5, min_equal=0.25)


@pytest.mark.e2e
def test_gemma_copies_its_tokenizer_and_stops_on_end_of_turn(gemma):
    import numpy as np

    from kotune.export.gguf import read_gguf

    model, tok, path, _, source, eot = gemma
    fields, tensors = read_gguf(path)
    src, _ = read_gguf(source)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token"):
        assert fields[key] == src[key], key
    assert fields["tokenizer.ggml.eos_token_id"] == tok.eos_token_id and fields["tokenizer.ggml.eot_token_id"] == eot
    assert fields["gemma3.rope.freq_base_swa"] == 10000.0 and fields["gemma3.attention.sliding_window"] == 512
    assert fields["tokenizer.ggml.tokens"] == src["tokenizer.ggml.tokens"]
    assert fields["tokenizer.ggml.scores"] == src["tokenizer.ggml.scores"]
    assert len(fields["tokenizer.ggml.tokens"]) == model.get_input_embeddings().weight.shape[0]
    assert "output.weight" not in tensors and tensors["token_embd.weight"]["type"] == "Q8_0"
    # Gemma3RMSNorm multiplies by (1 + w): llama.cpp's norms are stored shifted
    norm = tensors["blk.0.attn_norm.weight"]
    stored = np.memmap(path, dtype=np.float32, mode="r", offset=norm["offset"], shape=norm["shape"])
    hf = model.model.layers[0].input_layernorm.weight.detach().numpy()
    assert norm["type"] == "F32" and abs(stored - (hf + 1)).max() < 1e-6
    with llama_server(path) as base:
        ids = tok("<start_of_turn>user\n안녕하세요<end_of_turn>\n<start_of_turn>model\n")["input_ids"]
        r = llama_greedy(base, ids, 8, logit_bias=[[eot, 100.0]])
        assert r["tokens"] == [eot] and r["stop_type"] == "eos"


@pytest.mark.e2e
def test_a_gemma_base_kept_apart_is_its_source_files_tensors(gemma, tmp_path):
    """The base written for a LoRA kept apart (keep_source_tensors): every quantized tensor of the
    Q4_K_M file the base came from is copied byte for byte rather than re-quantized onto Q8_0's
    grid, so llama.cpp answers exactly as from the source file itself."""
    import numpy as np

    from kotune.export.gguf import _nbytes, read_gguf, write_gguf

    model, tok, _, _, source, eot = gemma
    path = tmp_path / "base.gguf"
    info = write_gguf(model, tok, path, quant="q8_0", chat_template=None, eos_ids=[tok.eos_token_id, eot],
                      pad_id=tok.pad_token_id, source_gguf=source, keep_source_tensors=True, log=lambda *a: None)
    _, src = read_gguf(source)
    _, ours = read_gguf(path)
    quantized = sorted(n for n, t in src.items() if t["type"] not in ("F32", "F16"))
    assert info["kept"] == len(quantized) == 127
    assert {ours[n]["type"] for n in quantized} == {"Q4_K", "Q5_0", "Q6_K", "Q8_0"}
    for n in quantized:
        size = _nbytes(tuple(src[n]["shape"]), gguf.GGMLQuantizationType[src[n]["type"]])
        assert ours[n]["type"] == src[n]["type"], n
        assert np.array_equal(np.fromfile(path, np.uint8, size, offset=ours[n]["offset"]),
                              np.fromfile(source, np.uint8, size, offset=src[n]["offset"])), n
    assert path.stat().st_size < source.stat().st_size * 1.05
    ids = tok("<start_of_turn>user\n국가 예산은 어떻게 정하나요?<end_of_turn>\n<start_of_turn>model\n")["input_ids"]
    answers = []
    for f in (path, source):
        with llama_server(f) as base:
            answers.append(llama_greedy(base, ids, 24)["tokens"])
    assert answers[0] == answers[1] and len(answers[0]) >= 8


@pytest.mark.e2e
def test_gemma_without_its_source_gguf_is_one_error_and_no_file(gemma, tmp_path):
    """Gemma's SentencePiece-style vocabulary (BPE with byte fallback) is copied from its GGUF, not converted."""
    from kotune.export.gguf import write_gguf

    model, tok, *_ = gemma
    path = tmp_path / "gemma.gguf"
    with pytest.raises(KotuneError, match="byte fallback"):
        write_gguf(model, tok, path, quant="q8_0", chat_template=None, eos_ids=[tok.eos_token_id], pad_id=None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.e2e
def test_q4_k_m_types_match_the_file_llama_quantize_made():
    """google/gemma-3-270m's Q4_K_M file (made by llama-quantize) has, tensor by tensor, the types
    this writer picks: Q6_K/Q5_0/Q8_0 fallbacks for 640-wide rows, Q6_K on use_more_bits layers."""
    from kotune.export.gguf import plan_tensor_types, read_gguf
    from kotune.model.loading import gemma_gguf_file

    meta, tensors = read_gguf(gemma_gguf_file(log=lambda *a: None))
    assert meta["general.file_type"] == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    planned = plan_tensor_types([(n, t["shape"]) for n, t in tensors.items()], "q4_k_m", arch="gemma3", n_layer=18)
    assert planned == {n: t["type"] for n, t in tensors.items()}


def test_q4_0_output_and_fallback_rules():
    from kotune.export.gguf import plan_tensor_types

    tensors = [("token_embd.weight", (1000, 512)), ("blk.0.attn_q.weight", (512, 512)),
               ("blk.0.attn_norm.weight", (512,)), ("blk.0.attn_qkv.bias", (1536,)),
               ("blk.0.ffn_down.weight", (512, 48)), ("blk.0.ffn_up.weight", (48, 40)), ("output.weight", (1000, 512))]
    assert plan_tensor_types(tensors, "q4_0", arch="llama", n_layer=1) == {
        "token_embd.weight": "Q4_0", "blk.0.attn_q.weight": "Q4_0", "blk.0.attn_norm.weight": "F32",
        "blk.0.attn_qkv.bias": "F32", "blk.0.ffn_down.weight": "F16", "blk.0.ffn_up.weight": "F16",
        "output.weight": "Q6_K"}
    assert plan_tensor_types(tensors, "f16", arch="llama", n_layer=1)["blk.0.ffn_up.weight"] == "F16"
    assert plan_tensor_types(tensors, "q8_0", arch="llama", n_layer=1)["output.weight"] == "Q8_0"


# ----------------------------------------------------------------------------- errors
def _tiny_gpt2():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32)).eval()


def test_unsupported_quant_or_architecture_is_one_error_and_no_file(tmp_path):
    from kotune.export.gguf import ARCHITECTURES, QUANTS, write_gguf

    model = _tiny_gpt2()
    path = tmp_path / "out.gguf"
    with pytest.raises(KotuneError) as e:
        write_gguf(model, None, path, quant="q3_k_xl", chat_template=None, eos_ids=[0], pad_id=None)
    assert "q3_k_xl" in str(e.value) and all(q in str(e.value) for q in QUANTS) and "\n" not in str(e.value)
    with pytest.raises(KotuneError) as e:
        write_gguf(model, None, path, quant="q8_0", chat_template=None, eos_ids=[0], pad_id=None)
    assert "gpt2" in str(e.value) and all(a in str(e.value) for a in ARCHITECTURES) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.e2e
def test_a_failure_while_writing_leaves_no_file(tiny, tmp_path, monkeypatch):
    import kotune.export.gguf as mod

    model, tok = tiny
    path = tmp_path / "out.gguf"
    path.write_bytes(b"an earlier export")
    calls = []

    def failing(data, qtype):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full")
        return real(data, qtype)

    real = mod._quantize
    monkeypatch.setattr(mod, "_quantize", failing)
    with pytest.raises(OSError):
        mod.write_gguf(model, tok, path, quant="q8_0", chat_template=None, eos_ids=[0], pad_id=1, log=lambda *a: None)
    assert [p.name for p in tmp_path.iterdir()] == ["out.gguf"] and path.read_bytes() == b"an earlier export"

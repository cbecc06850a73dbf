"""General ability (forgetting): lm-evaluation-harness tasks on every compared model.

Domain fine-tuning can quietly damage general ability. Korean teams check it with
KMMLU, HAE-RAE Bench or KoBEST, which lm-evaluation-harness has as tasks
(``kmmlu``, ``haerae``, ``kobest``, ``click``). ``kotune eval --benchmark
kmmlu,kobest`` runs them through lm-eval's Python API (the optional extra
``kotune[bench]``) on every local model of the evaluation, loaded by kotune's
resolver (base + adapter, GGUF, builtins) and handed to lm-eval's ``HFLM``; the
report gets a "general ability" table with each model's delta against the first
model, flagged when it lost more than ``margin``.

``--benchmark-data DIR`` is for machines without hub access: task YAMLs in DIR
(with their data files) are added to lm-eval's tasks and replace those of the
same name.

Endpoint models (``openai:URL#MODEL``) run through lm-eval's ``local-completions``
model: loglikelihood tasks send token ids to ``/v1/completions`` with ``echo``
and ``logprobs`` and read back the prompt's log-probabilities, tokenized by the
server's own tokenizer endpoints (``/tokenizer_info``, ``/tokenize``). vLLM and
kotune serve answer both; an endpoint that does not (hosted chat APIs) is listed
as not run, with why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from kotune.errors import KotuneError

DEFAULT_MARGIN = 0.02  # absolute accuracy a tuned model may lose before the report flags it
_PREFERRED = ("acc_norm,none", "acc,none", "exact_match,none", "f1,none", "mcc,none")


def _lm_eval():
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise KotuneError("--benchmark needs lm-evaluation-harness: pip install 'kotune[bench]'") from None
    return simple_evaluate, HFLM, TaskManager


def parse_tasks(value: str | None) -> list[str]:
    return [t.strip() for t in (value or "").split(",") if t.strip()]


def task_manager(tasks: list[str], data_dir: str | Path | None = None) -> Any:
    """lm-eval's task registry with ``data_dir``'s tasks added; checked before any model runs:
    a missing extra, a missing folder or an unknown task is one line."""
    _, _, TaskManager = _lm_eval()
    if data_dir is not None and not Path(data_dir).is_dir():
        raise KotuneError("no such folder (--benchmark-data)", path=data_dir)
    manager = TaskManager(include_path=str(data_dir) if data_dir else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise KotuneError(f"--benchmark: unknown task {unknown[0]!r} (lm-eval has e.g. kmmlu, haerae, kobest; "
                          "a local task's YAML goes in --benchmark-data DIR)")
    from lm_eval.tasks import get_task_dict

    try:  # loads (or finds cached) every task's data now, not after the answers
        get_task_dict(list(tasks), manager)
    except (OSError, ValueError, ConnectionError) as e:  # datasets' "couldn't reach", missing files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KotuneError(f"--benchmark {','.join(tasks)}: the task data could not be loaded ({first}); "
                          "on a machine without hub access put the task YAML and its data in "
                          "--benchmark-data DIR") from None
    return manager


def endpoint_lm(spec: Any, *, api_key: str | None = None, workers: int = 8) -> tuple[Any, str | None]:
    """lm-eval's ``local-completions`` model over an endpoint, or ``(None, why not)``."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from lm_eval.utils import check_remote_tokenizer_support

    url = spec.url.rstrip("/") + "/completions"
    if not check_remote_tokenizer_support(url, auth_token=api_key, max_retries=1):
        return None, ("the endpoint has no tokenizer endpoints (/tokenizer_info, /tokenize), which scoring prompts "
                      "by token needs; vLLM and kotune serve have them")
    lm = LocalCompletionsAPI(base_url=url, model=spec.model, tokenizer_backend="remote", auth_token=api_key,
                             num_concurrent=workers, max_retries=3, tokenized_requests=True)
    if api_key:
        lm._header = {"Authorization": f"Bearer {api_key}"}
    return lm, None


def run_benchmarks(models: dict[str, Any], tasks: list[str], manager: Any, *, limit: int | None = None,
                   batch_size: int = 8, margin: float = DEFAULT_MARGIN, workers: int = 8,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every task on every model (``{name: Model}`` from :func:`kotune.model.access.open_models`);
    ``{"tasks": {task: {"metric", "models": {name: score}}}, ...}``."""
    simple_evaluate, HFLM, _ = _lm_eval()
    result: dict[str, Any] = {"tasks": {}, "baseline": None, "margin": margin, "not_run": {}}
    for name, opened in models.items():
        if opened.mode != "local":
            lm, why = endpoint_lm(opened.spec, api_key=(opened.api_keys or [None])[0], workers=workers)
            if lm is None:
                result["not_run"][name] = why
                continue
        else:
            lm = HFLM(pretrained=opened.generator.model, tokenizer=opened.tokenizer, batch_size=batch_size,
                      device=opened.device)
        result["baseline"] = result["baseline"] or name
        log(f"general ability: {', '.join(tasks)} on {name} ...")
        out = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit, log_samples=False,
                              bootstrap_iters=0)
        for task, values in (out or {}).get("results", {}).items():
            metric = next((k for k in _PREFERRED if isinstance(values.get(k), (int, float))),
                          next((k for k, v in values.items() if isinstance(v, (int, float)) and "stderr" not in k), None))
            if metric is None:
                continue
            entry = result["tasks"].setdefault(task, {"metric": metric.split(",")[0], "models": {}})
            entry["models"][name] = round(float(values[metric]), 4)
        del lm
        opened.close()
    base = result["baseline"]
    result["flagged"] = sorted({f"{name} {task}" for task, e in result["tasks"].items() for name, v in e["models"].items()
                                if base and name != base and base in e["models"] and e["models"][base] - v > margin})
    return result


__all__ = ["DEFAULT_MARGIN", "parse_tasks", "run_benchmarks", "task_manager"]

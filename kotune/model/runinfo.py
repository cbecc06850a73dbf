"""The run record, ``OUT/kotune.json``: what a training run decided, read back by every later step.

Training writes it (and ``kotune export`` writes a copy next to the merged
weights); eval, chat, serve, export, doctor, recipes and the ``hf:`` teacher
read it through :class:`RunInfo`, never by string keys, so the template, EOS ids,
base model and load options are decided once and read back the same way
everywhere.

The file format is a contract (users and scripts read it): the keys are those
kotune has always written, plus ``schema_version``. Files without it are
version 0, which has the same shape; a file from a newer kotune is refused with
one line rather than half-read. Unknown keys are kept and written back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from kotune.errors import KotuneError
from kotune.model.templates import Template

RUN_FILE = "kotune.json"
SCHEMA_VERSION = 1


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")


class TemplateInfo(_Part):
    name: str
    system_prompts: dict[str, str] = {}
    default_system: str = ""

    def template(self) -> Template:
        return Template(self.name, dict(self.system_prompts), self.default_system)

    @classmethod
    def of(cls, template: Template) -> "TemplateInfo":
        return cls(**template.to_dict())


class DataInfo(_Part):
    path: str | None = None
    sha256: str | None = None
    train_records: int | None = None
    eval_records: int | None = None
    truncated: int | None = None
    train_tokens: int | None = None
    supervised_tokens: int | None = None


class FinalInfo(_Part):
    train_loss: float | None = None
    eval_loss: float | None = None
    initial_eval_loss: float | None = None
    steps: int | None = None
    seconds: float | None = None
    tokens_per_second: float | None = None


class GenerationInfo(_Part):
    eos_token_id: list[int] = []
    pad_token_id: int | None = None


class PreferenceInfo(_Part):
    """A preference-tuned run: which method, from which SFT run, on which data, and the
    held-out pairs' mean log-probability margin (chosen − rejected) before and after."""

    method: str
    beta: float | None = None
    sft_weight: float | None = None
    from_run: str | None = None
    from_method: str | None = None
    data: str | None = None
    pairs: int = 0
    labelled: int = 0
    eval_margin_before: float | None = None
    eval_margin_after: float | None = None
    eval_reward_margin: float | None = None
    eval_reward_accuracy: float | None = None


class GrpoInfo(_Part):
    """A GRPO run: its rewards and weights (``kotune.rl.rewards``), the SFT run it started from,
    the questions, the generation per question, and the reward curve (per logged step: the
    weighted reward and each reward's mean)."""

    rewards: dict[str, float] = {}
    from_run: str | None = None
    from_method: str | None = None
    data: str | None = None
    questions: int = 0
    unanswerable: int = 0
    num_generations: int | None = None
    max_completion_length: int | None = None
    beta: float | None = None
    retrieval: dict[str, Any] | None = None
    reward_curve: list[dict[str, Any]] = []


class RetrievalInfo(_Part):
    """How a grounded run (trained on questions with retrieved ``[문서 n]`` passages) is asked:
    eval, chat, serve and the studio retrieve this way for it when no ``--context`` is given
    (:func:`kotune.model.retrieval.retrieval_for`).

    ``chunks``: the chunks file to retrieve from (an absolute path, ``kotune train --chunks``;
    None when training was not given one: then ``--context`` is needed); ``top_k``: passages per
    question (the most a training record had); ``label``: the word passages are numbered with."""

    chunks: str | None = None
    top_k: int
    label: str = "문서"


class ExportedFrom(_Part):
    run: str
    method: str | None = None
    base_model: str | None = None


class RunInfo(_Part):
    """One run's record. ``config`` is the training configuration's fingerprint
    (``TrainConfig.fingerprint()``): resume compares it whole."""

    kotune_version: str | None = None
    schema_version: int = 0
    status: str = "complete"
    base_model: str = ""
    base_source: dict[str, Any] | None = None
    method: str | None = None
    template: TemplateInfo | None = None
    eos_token_ids: list[int] = []
    config: dict[str, Any] = {}
    data: DataInfo | None = None
    device: str | None = None
    processes: int | None = None
    batching: str | None = None
    attention: str | None = None
    trainable_parameters: int | None = None
    estimate: dict[str, Any] | None = None
    final: FinalInfo | None = None
    history: list[dict[str, Any]] = []
    generation: GenerationInfo | None = None
    exported_from: ExportedFrom | None = None
    preference: PreferenceInfo | None = None
    grpo: GrpoInfo | None = None
    abstention: str | None = None   # the sentence the run says when the documents do not hold the answer
    retrieval: RetrievalInfo | None = None   # a grounded run's retrieval settings (None: closed-book or plain)
    pid: int | None = None     # the training process (a running record whose process is gone was killed)

    # ------------------------------------------------------------ reading and writing
    @classmethod
    def read(cls, folder: str | Path) -> "RunInfo | None":
        """The record in ``folder``, or None when there is none."""
        p = Path(folder) / RUN_FILE
        if not p.exists():
            return None
        try:
            info = cls.model_validate_json(p.read_bytes())
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"]) or "file"
            what = f"broken kotune.json ({err['msg']})" if err["type"].startswith("json") else f"{where}: {err['msg']}"
            raise KotuneError(what, path=p) from None
        if info.schema_version > SCHEMA_VERSION:
            raise KotuneError(f"kotune.json has schema_version {info.schema_version}, newer than this kotune reads "
                              f"({SCHEMA_VERSION}); upgrade kotune", path=p)
        return info

    @classmethod
    def finished(cls, folder: str | Path, *, option: str = "") -> "RunInfo":
        """The record of the finished run in ``folder``, or one line saying why there is none
        (``option`` names the command-line option that gave the folder)."""
        prefix = f"{option}: " if option else ""
        path = Path(folder)
        if not path.exists():
            raise KotuneError(f"{prefix}no such folder", path=path)
        if not path.is_dir():
            raise KotuneError(f"{prefix}not a folder (give a kotune output folder)", path=path)
        info = cls.read(path)
        if info is None:
            raise KotuneError(f"{prefix}not a kotune output (no kotune.json); give the output folder of kotune train",
                              path=path)
        if not info.complete:
            raise KotuneError(f"{prefix}training has not finished (status {info.status!r}); finish or --resume it first",
                              path=path)
        return info

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to disk (keys that were never set are left out)."""
        data = self.model_dump(mode="json", exclude_unset=True)
        return {"kotune_version": data.pop("kotune_version", None), "schema_version": SCHEMA_VERSION, **data}

    def write(self, folder: str | Path) -> None:
        from kotune.io import write_json  # atomic: a crash never leaves half a record

        write_json(Path(folder) / RUN_FILE, self.to_dict())

    # ------------------------------------------------------------ what later steps read
    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def grounded(self) -> bool:
        """Trained on questions with retrieved passages: asked with passages at inference too."""
        return self.retrieval is not None

    @property
    def own_template(self) -> Template | None:
        """The whole template the run was trained with (system prompts included)."""
        return self.template.template() if self.template else None

    @property
    def trust_remote_code(self) -> bool:
        """Trained with ``--trust-remote-code``: every later load of the run needs it too."""
        return bool(self.config.get("trust_remote_code"))

    @property
    def max_length(self) -> int | None:
        return self.config.get("max_length")

    @property
    def lora_targets(self) -> list[str] | None:
        return self.config.get("lora_targets")

    def config_differences(self, fingerprint: dict[str, Any]) -> list[str]:
        """The settings in ``fingerprint`` this run was trained with other values of (a resume
        with other settings would train a different model)."""
        return sorted(k for k, v in fingerprint.items() if self.config.get(k) != v)

    @property
    def gguf_sha256(self) -> str | None:
        """The hash of the GGUF file the base came from (found again after the file moves)."""
        return ((self.base_source or {}).get("gguf") or {}).get("sha256")

    @property
    def steps(self) -> int | None:
        return self.final.steps if self.final else None

    @property
    def data_path(self) -> str | None:
        return self.data.path if self.data else None

    @property
    def pad_token_id(self) -> int | None:
        return self.generation.pad_token_id if self.generation else None

    @property
    def is_full_weights(self) -> bool:
        """A full fine-tune or a merged export: the folder holds the whole model."""
        return self.method in ("full", "merged")

    def exported(self, src: Path, method: str, eos: list[int], pad: int | None) -> "RunInfo":
        """The record of an export of this run: same template and base, its own EOS/pad and method."""
        return self.model_copy(update={
            "method": method, "eos_token_ids": list(eos),
            "generation": GenerationInfo(eos_token_id=list(eos), pad_token_id=pad),
            "exported_from": ExportedFrom(run=str(src.resolve()), method=self.method, base_model=self.base_model),
        })

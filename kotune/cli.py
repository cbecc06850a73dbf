"""The ``kotune`` command: parses, delegates, prints. No logic lives here."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from kotune import __version__
from kotune.errors import KotuneError
from kotune.ui import console, done, progress, warn

app = typer.Typer(
    name="kotune",
    help="Korean documents → instruction data → fine-tuned, evaluated, servable LLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_DEBUG = False


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kotune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    global _DEBUG
    _DEBUG = debug or _DEBUG


# ---------------------------------------------------------------- data stage
@app.command()
def prepare(
    inputs: List[Path] = typer.Argument(..., help="Documents (.txt .md .pdf .hwpx .hwp .docx) or folders of them."),
    output: Path = typer.Option(..., "--output", "-o", help="Chunks file to write (JSONL)."),
    chunk_chars: int = typer.Option(1000, "--chunk-chars", "--chunk_chars", min=50, help="Maximum characters per chunk."),
    overlap: int = typer.Option(100, "--overlap", min=0, help="Characters of whole sentences repeated between chunks."),
) -> None:
    """Documents → chunks: Kiwi sentences packed to --chunk-chars, headings as breadcrumbs."""
    from kotune.data.chunk import prepare as run_prepare
    from kotune.io import write_jsonl

    with progress() as bar:
        task = bar.add_task("reading documents", total=None)
        chunks = run_prepare(inputs, chunk_chars=chunk_chars, overlap=overlap, on_file=lambda p: bar.advance(task))
        bar.update(task, total=bar.tasks[0].completed)
    write_jsonl(output, (c.to_dict() for c in chunks))
    sources = len({c.metadata["source"] for c in chunks})
    done(f"{len(chunks)} chunks from {sources} document(s) → {output}")


@app.command()
def generate(
    chunks_file: Path = typer.Argument(..., metavar="CHUNKS", help="Chunks JSONL from `kotune prepare`."),
    output: Path = typer.Option(..., "--output", "-o", help="QA records file to write (JSONL)."),
    teacher: str = typer.Option("rule", "--teacher", help="rule (offline, default), hf:PATH or an OpenAI-compatible URL."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name for an LLM teacher."),
    per_chunk: int = typer.Option(8, "--per-chunk", "--per_chunk", min=1, help="At most this many records per chunk."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its journal."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard an interrupted run's journal and start over."),
) -> None:
    """Chunks → QA records (instruction/output), every record tied to its chunk_id and source."""
    from kotune.data.generate import generate_file, load_chunks, make_teacher

    chunks = load_chunks(chunks_file)
    t = make_teacher(teacher, model)
    with progress() as bar:
        task = bar.add_task(f"generating ({t.name})", total=len(chunks))
        records = generate_file(chunks, t, output, per_chunk=per_chunk, resume=resume, overwrite=overwrite,
                                on_chunk=lambda n: bar.advance(task, n))
    if not records:
        warn("the teacher produced no records from these chunks")
    done(f"{len(records)} records from {len(chunks)} chunks → {output}")


@app.command()
def validate(
    inputs: List[Path] = typer.Argument(..., metavar="QA...", help="QA files to merge (.jsonl .json .csv), in priority order."),
    output: Path = typer.Option(..., "--output", "-o", help="Clean records file to write."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the validation report (JSON) here."),
    chunks_file: Optional[Path] = typer.Option(None, "--chunks", help="Chunks JSONL, to check answers are grounded in their chunk."),
    mapping: Optional[List[str]] = typer.Option(None, "--map", help="Column mapping SOURCE=FIELD, e.g. --map 질문=instruction."),
    min_answer_chars: int = typer.Option(10, "--min-answer-chars", min=0, help="Drop answers shorter than this."),
    near_dup: float = typer.Option(0.85, "--near-dup-threshold", min=0.0, max=1.0, help="MinHash Jaccard at which records are near-duplicates."),
    min_grounding: float = typer.Option(0.5, "--min-grounding", min=0.0, max=1.0, help="Share of answer content morphemes that must occur in the source chunk."),
    grounding: bool = typer.Option(True, "--grounding/--no-grounding", help="Check answers against their chunk or input."),
) -> None:
    """Merge QA files; drop missing, duplicate, near-duplicate, short, incomplete, evasive and ungrounded records."""
    from kotune.data.generate import load_chunks
    from kotune.data.validate import ValidateConfig, render_tables, validate_records
    from kotune.io import write_json
    from kotune.records import parse_mapping, read_records, write_records

    mp = parse_mapping(mapping)
    records = []
    for path in inputs:
        for r in read_records(path, mp):
            r.extra["_file"] = str(path)
            records.append(r)
    chunks = {c["chunk_id"]: c["text"] for c in load_chunks(chunks_file)} if chunks_file else None
    config = ValidateConfig(min_answer_chars=min_answer_chars, near_dup_threshold=near_dup,
                            min_grounding=min_grounding, check_grounding=grounding)
    with console.status(f"validating {len(records)} records"):
        result = validate_records(records, chunks, config)
    for table in render_tables(result):
        console.print(table)
    if not result.kept:
        raise KotuneError(f"no records left after validation (of {len(records)}); see the table above")
    write_records(output, result.kept)
    if report:
        write_json(report, result.report())
    done(f"kept {len(result.kept)} of {len(records)} records → {output}" + (f" (report: {report})" if report else ""))


@app.command()
def split(
    data: Path = typer.Argument(..., help="Records to split (.jsonl .json .csv)."),
    train: Path = typer.Option(..., "--train", help="Train file to write."),
    test: Path = typer.Option(..., "--test", help="Test file to write."),
    test_size: float = typer.Option(0.1, "--test-size", "--test_size", min=0.0, max=1.0, help="Share of groups for test."),
    stratify: str = typer.Option("category", "--stratify", help="Field to stratify by ('' for none)."),
    seed: int = typer.Option(42, "--seed", help="Random seed; the same seed gives the same split."),
    augment_n: int = typer.Option(0, "--augment", min=0, help="Add N paraphrased-instruction variants per train record."),
    augment_test: bool = typer.Option(False, "--augment-test", help="Augment the test file too (variants stay on their original's side)."),
    mapping: Optional[List[str]] = typer.Option(None, "--map", help="Column mapping SOURCE=FIELD."),
) -> None:
    """Stratified, deterministic train/test split; optional instruction augmentation without leakage."""
    from kotune.data.split import augment, stratified_split
    from kotune.records import parse_mapping, read_records, write_records

    if not 0 < test_size < 1:
        raise KotuneError(f"--test-size must be between 0 and 1, got {test_size}")
    records = read_records(data, parse_mapping(mapping))
    if len(records) < 2:
        raise KotuneError("need at least two records to split", path=data)
    tr, te = stratified_split(records, test_size=test_size, stratify=stratify or None, seed=seed)
    if augment_n:
        tr = augment(tr, augment_n, seed=seed)
        if augment_test:
            te = augment(te, augment_n, seed=seed)
    write_records(train, tr)
    write_records(test, te)
    done(f"train {len(tr)} → {train}, test {len(te)} → {test}")


# ---------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user mistakes print one ``error:`` line and exit 2."""
    global _DEBUG
    argv = list(sys.argv[1:] if argv is None else argv)
    _DEBUG = "--debug" in argv or os.environ.get("KOTUNE_DEBUG") == "1"
    try:
        app(args=argv, prog_name="kotune", standalone_mode=False)
    except KotuneError as e:
        if _DEBUG:
            raise
        console.print(f"[red]error:[/red] {e}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise

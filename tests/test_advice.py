"""Advice that works as written (issue 42, section 2): every ``model.*`` / ``data.*`` / ``trainer.*`` /
``prediction.*`` knob that a message, the README, the docs, a config or the notebook names is an option of
the CLI, every value shown beside it parses there, every guide section a message points to exists, and
every relative link of the docs resolves (file and heading)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
import typing
from pathlib import Path

import pytest
from lightning.pytorch import Trainer

from maskmatch_pl import MaskMatchModule, SemiSupervisedDataModule
from maskmatch_pl.cli import main
from maskmatch_pl.prediction import PredictionWriter

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {
    "model": MaskMatchModule,
    "data": SemiSupervisedDataModule,
    "trainer": Trainer,
    "prediction": PredictionWriter,
}
GROUPS = "network|pseudo_labels|masking|weights|views|sup_loss|optimization|evaluation|experimental"
VALUE = r"(\"[^\"]*\"|\{[^}]*\}|\[[^\]]*\]|[^\s`'\",;)\]]+)"
# a knob (model's groups may go without ``model.``), optionally with the value shown:
# `--model.a.b=v`, `--model.a.b v`, `model.a.b: v`, `a.b=v`
KNOB = re.compile(
    rf"(?<![\w./-])(--)?((?:model|data|trainer|prediction|{GROUPS})(?:\.[a-z_]\w*)+)(?![\w(])"
    rf"(?:(?:=|: ){VALUE}|(?<=[a-z_\d]) (?=[^-\s]){VALUE})?"
)
NOT_KNOBS = {"onnx", "pt", "py", "yaml", "ckpt", "png", "jpg"}  # file names such as model.onnx


def _doc_texts() -> dict[str, str]:
    """What a user reads: README, docs, configs, the notebook's markdown, and the string constants of the
    package that are not docstrings (its messages)."""
    texts = {}
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = path.read_text()
        texts[path.name] = re.sub(r"```python\n.*?```", "", text, flags=re.S)  # Python code, not knobs
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        texts[str(path.relative_to(REPO))] = path.read_text()
    notebook = json.loads((REPO / "notebooks" / "quickstart.ipynb").read_text())
    texts["quickstart.ipynb"] = "\n".join(
        "".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "markdown"
    )
    for path in sorted((REPO / "src" / "maskmatch_pl").rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        strings = [
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
        ]
        texts[str(path.relative_to(REPO))] = "\n".join(strings)
    return texts


def _mentions() -> list[tuple[str, str, str | None]]:
    """(where, knob, value shown or None) for every knob named in what a user reads."""
    found = []
    for where, text in _doc_texts().items():
        code = [span.span() for span in re.finditer(r"```.*?```|`[^`\n]+`", text, flags=re.S)]
        for match in KNOB.finditer(text):
            dashes, knob, value = match.group(1), match.group(2), match.group(3)
            in_code = any(start <= match.start() < end for start, end in code) or where.startswith("src/")
            if value is None and dashes and in_code:  # `--knob value`: a value after a space in code only
                value = match.group(4)
            if knob.rsplit(".", 1)[-1] in NOT_KNOBS:
                continue
            if knob.split(".")[0] not in SECTIONS:
                knob = f"model.{knob}"
            found.append((where, knob, value.rstrip(".").strip('"') if value else None))
    return found


def _dataclass_of(annotation: typing.Any) -> type | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None


def _is_option(knob: str) -> bool:
    """True when ``knob`` names an option of ``maskmatch-pl fit`` (or a part of one that takes a class,
    such as ``trainer.logger.save_dir``)."""
    section, name, *rest = knob.split(".")
    parameters = inspect.signature(SECTIONS[section].__init__).parameters
    if name not in parameters:
        return False
    hints = typing.get_type_hints(SECTIONS[section].__init__) if section in ("model", "data") else {}
    group = _dataclass_of(hints.get(name))
    if group is None or not rest:
        return True  # an option, or a part of a class-valued option (trainer.logger.*, model.model.*)
    return rest[0] in {field.name for field in dataclasses.fields(group)} and len(rest) == 1


def test_every_knob_named_to_users_is_an_option_of_the_cli():
    mentions = _mentions()
    assert len(mentions) > 50  # the scan reads the docs and the messages
    unknown = sorted({f"{where}: {knob}" for where, knob, _ in mentions if not _is_option(knob)})
    assert not unknown, "names that are no CLI option:\n" + "\n".join(unknown)


def _values_by_round() -> list[list[tuple[str, str]]]:
    """The (knob, value) pairs shown to users, in rounds where each knob appears once; an argument of a
    class-valued knob (``trainer.logger.save_dir``) goes with a class shown for that knob (``CSVLogger``)."""
    shown = {(knob, value) for _, knob, value in _mentions() if value and not re.search(r"[<$(]|^[A-Z]+$", value)}
    classes = {knob: value for knob, value in shown if value[:1].isupper() or "." in value and value[0].isalpha()}
    rounds: list[list[tuple[str, str]]] = []
    for knob, value in sorted(shown):
        parent = knob.rsplit(".", 1)[0]
        if parent in classes and parent.count(".") >= 1:
            rounds.append([(parent, classes[parent]), (knob, value)])
            continue
        for group in rounds:
            if all(knob != other and not other.startswith(knob + ".") for other, _ in group):
                group.append((knob, value))
                break
        else:
            rounds.append([(knob, value)])
    return rounds


def test_every_value_shown_with_a_knob_parses_in_the_cli(capsys):
    rounds = _values_by_round()
    assert rounds
    for group in rounds:
        arguments = [f"--{knob}={value}" for knob, value in group]
        with pytest.raises(SystemExit) as done:
            main(["fit", "--config", str(REPO / "configs" / "demo.yaml"), *arguments, "--print_config"])
        assert done.value.code in (0, None), f"{arguments} do not parse:\n{capsys.readouterr().err[-3000:]}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _headings(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")}


def test_guide_sections_named_in_messages_exist():
    guide = _headings(REPO / "docs" / "guide.md")
    named = []
    for where, text in _doc_texts().items():
        named += [(where, title) for title in re.findall(r"guide\.md[,]? '([^']+)'", text)]
    assert named
    missing = [f"{where}: '{title}'" for where, title in named if title not in guide]
    assert not missing, "guide sections that do not exist:\n" + "\n".join(missing)


def test_relative_links_of_the_docs_resolve():
    broken = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                broken.append(f"{path.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in {_slug(h) for h in _headings(linked)}:
                broken.append(f"{path.name}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_top_level_help_names_every_command_export_included(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{fit,validate,test,predict}" in text and "maskmatch-pl export --ckpt_path CKPT --output FILE" in text
    with pytest.raises(SystemExit) as done:
        main(["export", "--help"])
    assert done.value.code == 0 and "--ckpt_path" in capsys.readouterr().out

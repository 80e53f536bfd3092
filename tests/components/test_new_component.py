"""Adding a component is one folder plus one call in a pipeline (components/README.md, "Adding a
component"): a toy component written that way, in a folder of its own and nowhere else, is found
by ``mammo component``, gets its flags and its README's Inputs table from its ``entrypoint.run``,
runs from the command line, is packaged, and a pipeline that calls its KFP component compiles
with every input described."""

import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import mammo_components

#: The toy's folder, file by file, as components/README.md says to write one.
TOY = {
    "__init__.py": '"""Word counter: counts the words of a text in storage (a toy component)."""\n',
    "entrypoint.py": '''
        """Word counter: the number of words of a text in storage, published as result.json."""

        from __future__ import annotations

        from typing import Any

        from mammo import storage


        def run(
            *,
            text_uri: str,
            out_uri: str,
            params: dict[str, Any],
            workdir: str | None = None,
            run_id: str | None = None,
            separator: str | None = None,
        ) -> dict[str, Any]:
            """Count the words of a text.

            Reads the text, splits it and writes the count to `<out_uri>/result.json`.

            Args:
                text_uri: The text to count, a UTF-8 file in storage.
                out_uri: Output folder of the count.
                params: `PipelineParams` (none used).
                workdir: Unused (no local cache).
                run_id: Unused (no telemetry).
                separator: What separates words (default: any whitespace).
            """
            words = len(storage.get_bytes(text_uri).decode("utf-8").split(separator))
            result = {"words": words, "result_uri": storage.join(out_uri, "result.json")}
            storage.put_json(result, result["result_uri"])
            return result
    ''',
    "step.py": '''
        """The word counter's KFP step."""

        from typing import Any

        from mammo_components.word_counter.entrypoint import run


        def run_step(*, text_uri: str, store_uri: str, run_id: str, counted: Any) -> int:
            """Count into <store>/runs/<run_id>/word_counter/; the count is the step's output."""
            from mammo import storage

            result = run(text_uri=text_uri, out_uri=storage.run_uri(store_uri, run_id, "word_counter"), params={})
            counted.metadata.update(result)
            return result["words"]
    ''',
    "component.py": '''
        """The word counter's KFP component."""

        from kfp import dsl
        from kfp.dsl import Dataset, Output

        from mammo_components.kfp_component import EVAL_IMAGE, described


        @dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
        @described
        def word_counter(text_uri: str, store_uri: str, run_id: str, counted: Output[Dataset]) -> int:
            """Counts the words of a text.

            Args:
                text_uri: The text whose words are counted.
                counted: Where the count is (metadata: the result).
            """
            from mammo_components.word_counter.step import run_step

            return run_step(text_uri=text_uri, store_uri=store_uri, run_id=run_id, counted=counted)
    ''',
    "README.md": """
        # word counter

        Counts the words of a text in storage (a toy).

        ## Inputs

        | Argument | Meaning |
        |---|---|
        | `text_uri` | (written by `python -m mammo_components.readmes`) |

        ## Outputs
        `<out>/result.json`: `{"words": N}`.
    """,
}


@pytest.fixture()
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The toy's folder in a directory of its own, which ``mammo_components`` searches too (as
    its own folder, once the toy is written there)."""
    root = tmp_path / "more_components"
    folder = root / "word_counter"
    folder.mkdir(parents=True)
    for name, text in TOY.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip("\n"))
    monkeypatch.setattr(mammo_components, "__path__", [*mammo_components.__path__, str(root)])
    yield folder
    for name in [m for m in sys.modules if m.startswith("mammo_components.word_counter")]:
        del sys.modules[name]


def test_the_command_line_finds_the_new_folder_and_its_flags(toy: Path, capsys: pytest.CaptureFixture) -> None:
    from mammo_components.cli import main

    assert main(["--help"]) == 0
    assert "word-counter" in capsys.readouterr().out
    assert main(["word-counter", "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "Count the words of a text." in shown
    assert "--text URI The text to count, a UTF-8 file in storage." in shown
    assert "--out URI Output folder of the count." in shown
    assert "--separator SEPARATOR What separates words (default: any whitespace). (optional)" in shown
    # required as run() says: no --out, one line and exit status 2
    assert main(["word-counter", "--text", "t.txt"]) == 2
    assert "--out" in capsys.readouterr().err


def test_it_runs_from_the_command_line(toy: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mammo_components.cli import main

    text = tmp_path / "poem.txt"
    text.write_text("so much depends, upon a red wheel barrow")
    assert main(["word-counter", f"--text={text}", f"--out={tmp_path / 'count'}"]) == 0
    assert json.loads(capsys.readouterr().out)["words"] == 8
    assert json.loads((tmp_path / "count" / "result.json").read_text())["words"] == 8
    assert main(["word-counter", f"--text={text}", f"--out={tmp_path / 'c2'}", "--separator=,"]) == 0
    assert json.loads(capsys.readouterr().out)["words"] == 2


def test_its_readme_table_is_written_from_its_declaration(toy: Path, capsys: pytest.CaptureFixture) -> None:
    from mammo_components.readmes import main

    assert main(["--check"]) == 1
    assert "word_counter/README.md: Inputs table differ" in capsys.readouterr().out
    assert main([]) == 0
    assert main(["--check"]) == 0
    readme = (toy / "README.md").read_text()
    assert "| `text_uri` (`--text`) | The text to count, a UTF-8 file in storage. |" in readme
    assert "| `separator` (`--separator`, optional) | What separates words (default: any whitespace). |" in readme
    assert "| `params` (`--param`, `--params-json`) |" in readme
    assert readme.endswith('## Outputs\n`<out>/result.json`: `{"words": N}`.\n')  # the prose around it kept


def test_it_is_packaged(toy: Path, tmp_path: Path) -> None:
    """A build finds the new folder by the include pattern of components/pyproject.toml."""
    import shutil

    from component_support import packaged

    project = tmp_path / "project"
    shutil.copytree(toy, project / "mammo_components" / toy.name)
    (project / "mammo_components" / "__init__.py").write_text("")
    pyproject = Path(mammo_components.__file__).resolve().parents[1] / "pyproject.toml"
    assert packaged(project, pyproject) == ["mammo_components", "mammo_components.word_counter"]


def test_one_call_puts_it_in_a_pipeline(toy: Path, tmp_path: Path) -> None:
    """The pipeline imports and calls it; the compiled spec describes each input: the ones only
    the toy has from its own docstring, the shared ones (store_uri, run_id) from STEP_INPUTS."""
    from kfp import compiler, dsl

    from mammo_components.kfp_component import STEP_INPUTS
    from mammo_components.word_counter.component import word_counter

    @dsl.pipeline(name="toy")
    def toy_pipeline(text_uri: str, store_uri: str = "s3://mammo") -> None:
        word_counter(text_uri=text_uri, store_uri=store_uri, run_id="r1")

    compiler.Compiler().compile(toy_pipeline, str(tmp_path / "toy.yaml"))
    spec = yaml.safe_load((tmp_path / "toy.yaml").read_text())
    interface = spec["components"]["comp-word-counter"]
    inputs = {name: p["description"] for name, p in interface["inputDefinitions"]["parameters"].items()}
    assert inputs == {
        "text_uri": "The text whose words are counted.",
        "store_uri": STEP_INPUTS["store_uri"],
        "run_id": STEP_INPUTS["run_id"],
    }
    assert interface["outputDefinitions"]["artifacts"]["counted"]["description"] == \
        "Where the count is (metadata: the result)."
    assert "Counts the words of a text." in spec["deploymentSpec"]["executors"]["exec-word-counter"]["container"]["command"][-1]


def test_an_input_described_nowhere_fails_at_import(toy: Path) -> None:
    (toy / "component.py").write_text((toy / "component.py").read_text().replace(
        "text_uri: The text whose words are counted.", "text_url: The text whose words are counted."))
    with pytest.raises(TypeError, match="word_counter: no description .* for text_uri"):
        __import__("mammo_components.word_counter.component")

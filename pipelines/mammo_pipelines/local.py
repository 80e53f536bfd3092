"""Run the pipeline on this machine through kfp.local, the same definition the cluster runs.

kfp.local's ``SubprocessRunner(use_venv=False)`` executes each step as a subprocess of this
Python environment (where ``mammo_components`` and torch are installed) and ignores the
kfp-kubernetes settings. It prints every step's full executor log; ``run_locally`` keeps all of
it in a log file and, unless ``verbose``, shows only progress: which step runs, the trainers'
epochs, and how each step ended.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import io
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from mammo.console import environment
from mammo.errors import MammoError
from mammo_components.kfp_component import EVAL_IMAGE, TRAIN_IMAGE
from mammo_pipelines.pipeline import build_pipeline
from mammo_pipelines.profiles import Profile, Retry, get_profile

#: Task names (as kfp.local prints them) -> what the progress line calls them, in order.
STEPS = {
    "split-builder": "split builder",
    "baseline-trainer": "baseline trainer",
    "unfreeze-trainer": "unfreeze trainer",
    "evaluator": "evaluator",
    "promoter": "promoter",
}
#: The preprocessor's tasks (dataset_format dicom), shown unnumbered before the five steps.
PREPROCESS_STEPS = {
    "preprocess-plan": "preprocess plan",
    "preprocessor": "preprocessor shard",
    "preprocess-merge": "preprocess merge",
}
#: The k-fold tasks (folds > 1), shown unnumbered between the trainers and the evaluator.
FOLD_STEPS = {
    "fold-plan": "fold plan",
    "fold-baseline-trainer": "fold baseline trainer",
    "fold-unfreeze-trainer": "fold unfreeze trainer",
    "fold-models": "fold models",
}
#: Unnumbered tasks and the tag their progress lines carry.
UNNUMBERED = {**{t: ("dicom", n) for t, n in PREPROCESS_STEPS.items()}, **{t: ("folds", n) for t, n in FOLD_STEPS.items()}}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([\w-]+)'")
_END = re.compile(r"Task '([\w-]+)' finished with status (\w+)")
_EPOCH = re.compile(r"(baseline|unfreeze) epoch (\d+)/(\d+) .*?auc=(\S+)")
_FINISHED = re.compile(r"(baseline|unfreeze): run in \S+ already finished at epoch (\d+)")
_ERROR = re.compile(r"^\s*((?:[\w.]+\.)?\w*(?:Error|Exception)): (.+)$")


class StepFailed(MammoError):
    """A pipeline step failed; the message names it and its last error line."""


@dataclass
class _State:
    current: str | None = None
    started: float = 0.0
    error: str | None = None


class ProgressFilter(io.TextIOBase):
    """Receives kfp.local's output (it prints everything to stdout): writes all of it to
    ``log`` and shows progress lines on ``screen``, or everything when ``verbose``."""

    def __init__(self, log: TextIO, screen: TextIO, verbose: bool) -> None:
        self._file = log
        self.log: TextIO | None = log
        self.screen = screen
        self.verbose = verbose
        self.state = _State()
        self._partial = ""

    def writable(self) -> bool:
        return True

    def _to_log(self, action: Callable[[TextIO], object]) -> None:
        """Write to the run log while it can be written: a full disk (the very fault a step may
        be reporting) ends the log with one note on screen, never the run's own error report."""
        if self.log is None:
            return
        try:
            action(self.log)
        except OSError as exc:
            name = getattr(self.log, "name", "the run log")
            self.log = None
            self.screen.write(f"note: {name} could not be written further ({exc.strerror or exc}); it is incomplete\n")

    def write(self, text: str) -> int:
        self._to_log(lambda log: log.write(text))
        if self.verbose:
            self.screen.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self._to_log(lambda log: log.flush())
        self.screen.flush()

    def close_log(self) -> None:
        """Close the run log; what a full disk kept from it was said already (``_to_log``)."""
        self._to_log(lambda log: log.flush())
        try:
            self._file.close()
        except OSError:
            pass

    def _show(self, text: str) -> None:
        if not self.verbose:
            self.screen.write(text + "\n")
            self.screen.flush()

    def _line(self, line: str) -> None:
        state = self.state
        if (match := _START.search(line)) and match.group(1) in STEPS:
            state.current, state.started, state.error = match.group(1), time.monotonic(), None
            number = list(STEPS).index(state.current) + 1
            self._show(f"[{number}/{len(STEPS)}] {STEPS[state.current]} ...")
        elif (match := _START.search(line)) and match.group(1) in UNNUMBERED:
            state.current, state.started, state.error = match.group(1), time.monotonic(), None
            tag, name = UNNUMBERED[state.current]
            self._show(f"[{tag}] {name} ...")
        elif (match := _END.search(line)) and match.group(1) in UNNUMBERED:
            verdict = "done" if match.group(2) == "SUCCESS" else "FAILED"
            self._show(f"      {UNNUMBERED[match.group(1)][1]} {verdict} in {time.monotonic() - state.started:.0f} s")
        elif match := _EPOCH.search(line):
            stage, epoch, total, auc = match.groups()
            self._show(f"      {stage} epoch {epoch}/{total}: val AUC {auc}")
        elif match := _FINISHED.search(line):
            self._show(f"      {match.group(1)}: finished earlier at epoch {match.group(2)} (same run id), reused")
        elif (match := _ERROR.match(line)) and state.current:
            state.error = f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2)}"
        elif (match := _END.search(line)) and match.group(1) in STEPS:
            seconds = time.monotonic() - state.started
            verdict = "done" if match.group(2) == "SUCCESS" else "FAILED"
            self._show(f"      {STEPS[match.group(1)]} {verdict} in {seconds:.0f} s")


@contextlib.contextmanager
def _removed_after(folder: Path) -> Iterator[None]:
    """``folder`` (made by this run) and what the steps left in it, removed at the end."""
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _quiet_root(verbose: bool) -> Iterator[None]:
    """kfp.local logs a few lines through the root logger outside its own handlers; keep
    them off the screen unless verbose."""
    root = logging.getLogger()
    level = root.level
    if not verbose:
        root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(level)


def local_profile() -> Profile:
    """The kind profile as ``mammo run`` compiles it. One machine: a step that failed fails the
    same way again (a full disk, a diverged loss, bad data), so nothing is retried here (the
    cluster's retries start a fresh pod, maybe on another node; ``mammo run`` again resumes
    where the run stopped); no volumes or key files (kfp.local applies neither); and the folds
    (``folds`` > 1) train one after another, not all at once."""
    return dataclasses.replace(
        get_profile("kind", train_image=TRAIN_IMAGE, eval_image=EVAL_IMAGE),
        retry=Retry(attempts=0), data_mount=None, key_files=None, fold_parallelism=1,
    )


def run_locally(
    arguments: dict[str, Any],
    *,
    pipeline_root: Path,
    log_file: Path,
    cache_dir: Path,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run the pipeline with ``arguments``; return the evaluator's best-candidate metadata
    (metrics, report URI, promotion verdict, run id). A failed step raises ``StepFailed``."""
    from kfp import local

    pipeline = build_pipeline(local_profile())
    pipeline_root.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    # Caches stay in the run's work directory unless the environment names others; matplotlib's
    # font cache too (it would go to ~/.cache/matplotlib, which may not be writable). Each step's
    # scratch files as well: kfp.local's steps write their component code to `mktemp -d`
    # folders they never remove, so TMPDIR is a folder of this run, removed when it ends.
    cache_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="steps-tmp-", dir=cache_dir))
    env = {
        "MAMMO_CACHE_DIR": os.environ.get("MAMMO_CACHE_DIR") or str(cache_dir),
        "MPLCONFIGDIR": os.environ.get("MPLCONFIGDIR") or str(cache_dir / "matplotlib"),
        "TMPDIR": str(scratch),
        "PYTHONUNBUFFERED": "1",
    }
    with environment(env), warnings.catch_warnings(), _quiet_root(verbose), _removed_after(scratch):
        # Expected here: placeholder images without "python" in their names, and cluster
        # settings (resources, labels) that kfp.local ignores.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*", category=UserWarning)
        progress = ProgressFilter(log_file.open("w"), sys.stdout, verbose)
        original_print = builtins.print  # kfp.local swaps it while a step runs
        try:
            with contextlib.redirect_stdout(progress):
                task = pipeline(**arguments)
        except RuntimeError as err:
            failed = progress.state.current or "pipeline"
            detail = progress.state.error or str(err).splitlines()[0]
            raise StepFailed(
                f"{STEPS.get(failed, UNNUMBERED.get(failed, (None, failed))[1])} failed: {detail} (full log: {log_file})"
            ) from None
        finally:
            builtins.print = original_print
            _drop_handlers_on(progress)
            progress.close_log()
    return dict(task.outputs["Output"].metadata)


def _drop_handlers_on(stream: Any) -> None:
    """Logging handlers made while stdout was redirected to ``stream`` (a closed log file once
    the run is over) would fail on every later record: remove them."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
    for logger in loggers:
        for handler in list(logger.handlers):
            if getattr(handler, "stream", None) is stream:
                logger.removeHandler(handler)

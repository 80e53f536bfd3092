"""One kfp 2.17 hot spot, made cheap: ``PipelineTask._ensure_container_spec_exists``, which every
task setter (``set_cpu_limit``, ``set_env_variable``, ...) calls, builds ``inspect.stack()`` -
every frame of the call stack with its source lines, each frame's module looked up among all of
``sys.modules`` - only to name the caller in an error message it rarely raises. A pipeline of
this project calls it about 130 times, and the cost grows with the depth of the stack times the
modules loaded: 0.4-0.6 s for a compile from the command line, 5-7 s from inside the test suite
(a deep stack, torch and scipy loaded), where uploading four versions took 34 s and now 2.5 s. The replacement makes the same check and
raises the same message, naming the caller from its frame alone. Installed on import of the
pipeline modules; a kfp without the method is left alone."""

from __future__ import annotations

import sys

from kfp.dsl import PipelineTask

#: kfp's own implementation, kept for the test that both say the same.
ORIGINAL = getattr(PipelineTask, "_ensure_container_spec_exists", None)


def ensure_container_spec_exists(task: PipelineTask) -> None:
    """kfp's check: the setters apply to single-step components only."""
    if task.container_spec is None:
        caller = sys._getframe(1).f_code.co_name
        raise ValueError(
            f"{caller} can only be used on single-step components, not pipelines used as components, "
            "or special components like importers."
        )


if ORIGINAL is not None:
    PipelineTask._ensure_container_spec_exists = ensure_container_spec_exists  # type: ignore[method-assign]

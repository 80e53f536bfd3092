"""mammo_pipelines: the ``mammo-training`` Kubeflow pipeline.

Compile it (``mammo pipeline compile --profile gpu|kind``), submit it to a KFP endpoint, schedule
recurring retraining, or run it on this machine through kfp.local (``mammo run``). Importing and
compiling needs the KFP SDK and mammo's torch-free modules only; the steps themselves run the
``mammo_components`` entrypoints in the project's images (see README.md).
"""

from mammo_pipelines.pipeline import PIPELINE_NAME, build_pipeline, compile_pipeline
from mammo_pipelines.profiles import PROFILES, Profile, get_profile

__all__ = ["PIPELINE_NAME", "PROFILES", "Profile", "build_pipeline", "compile_pipeline", "get_profile"]

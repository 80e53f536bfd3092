"""The split builder's KFP step (``split_builder.component.split_builder`` calls ``run_step``).

It validates the run's parameters (the promotion rule too, so a typo fails in seconds, not
after training), builds or reuses the dataset's split (``entrypoint.run``), and names the run:
the run id is a digest of everything the run's results depend on - every dataset object's name,
size and ETag, the split's sha256, the training parameters, the images (``code_version``) and
the installed ``mammo``/``mammo_components`` code. Same inputs, same run id: KFP's cache and the
run folder ``runs/<run-id>/`` are reused; any change gives a new one. Its telemetry is pushed
once that id exists (a failure before shows in KFP only).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from mammo.config import PipelineParams
from mammo.console import setup_logging
from mammo.promotion import PromotionRule
from mammo.storage import join, open_store, put_json, run_uri
from mammo.telemetry import Telemetry
from mammo_components.artifacts import write_artifact_json
from mammo_components.inputs import parse_params
from mammo_components.split_builder.entrypoint import COMPONENT, run

#: Files of an installed package that make up its behaviour: code, report templates, presets.
CODE_SUFFIXES = (".py", ".html", ".yaml")
RUN_ID_LENGTH = 16


class SplitOutputs(NamedTuple):
    """The step's output parameters (KFP reads them by these names)."""

    split_uri: str
    dataset_fingerprint: str
    run_id: str
    params: dict


def code_digest(packages: Iterable[ModuleType]) -> str:
    """sha256 over the code of installed ``packages``: every file with a ``CODE_SUFFIXES``
    suffix, its path relative to the package and its bytes, in path order."""
    code = hashlib.sha256()
    for package in packages:
        root = Path(package.__file__).parent
        for path in sorted(p for p in root.rglob("*") if p.suffix in CODE_SUFFIXES):
            code.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return code.hexdigest()


def installed_code() -> str:
    """``code_digest`` of the installed ``mammo`` and ``mammo_components``."""
    import mammo
    import mammo_components

    return code_digest([mammo, mammo_components])


def dataset_objects(dataset_uri: str) -> list[list[Any]]:
    """``[uri, size, etag]`` of every object under ``dataset_uri``: a replaced image changes
    its ETag, so the run id sees more than the table."""
    return [[o.uri, o.size, o.etag] for o in open_store(dataset_uri).list_info(dataset_uri)]


def derive_run_id(*, objects: list[list[Any]], split_sha256: str, params: dict[str, Any], code: list[str]) -> str:
    """The run id: the first ``RUN_ID_LENGTH`` hex digits of the sha256 of the run's identity
    (dataset objects, split, parameters, code), as canonical JSON."""
    identity = {"objects": objects, "split": split_sha256, "params": params, "code": code}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:RUN_ID_LENGTH]


def step_params(values: dict[str, Any]) -> PipelineParams:
    """``PipelineParams`` from the step's parameters (the dataset is the step's own
    ``dataset_uri``, never a params value). KFP parameters cannot be null, so an empty string
    stands for an unset optional value (``weights``); a bad key or value is a one-line
    ``ConfigError``."""
    fields = PipelineParams.model_fields
    cleaned = {
        name: None if value == "" and name in fields and fields[name].default is None else value
        for name, value in values.items()
    }
    return parse_params(cleaned)


#: Where the run folder lists the KFP runs that used it: ``runs/<run-id>/kfp-runs/<uuid>.json``.
KFP_RUNS = "kfp-runs"


def record_kfp_run(store_uri: str, run_id: str, kfp_run_id: str, split_uri: str) -> str:
    """Note in the run folder that KFP run ``kfp_run_id`` used it (one small object per KFP run:
    a cached rerun of the same inputs adds its own); returns the object's URI."""
    uri = join(run_uri(store_uri, run_id, KFP_RUNS), f"{kfp_run_id}.json")
    put_json({
        "kfp_run_id": kfp_run_id, "run_id": run_id, "split_uri": split_uri,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, uri)
    return uri


def run_step(*, split: Any, dataset_uri: str, store_uri: str, code_version: str, kfp_run_id: str = "",
             **values: Any) -> SplitOutputs:
    """The whole step: ``values`` are the step's PipelineParams fields, ``split`` its KFP
    Dataset output (metadata: split URI, sha256, fingerprint, counts, reused, run id, KFP run
    id; file: the split's result). ``kfp_run_id`` (KFP's ``pipeline_job_uuid``) is recorded in
    the run folder, never in the run id: a rerun of the same inputs is the same run. Returns the
    output parameters; ``params`` is what the later steps get (the training values, JSON-ready)."""
    setup_logging()
    started = time.monotonic()
    params = step_params(values)
    PromotionRule(params.promotion_metric, params.promotion_rule, params.promotion_margin, params.promotion_min,
                  params.promotion_min_cancers).check()
    training = params.training_values()
    # The split ledger is the model name's (mammo.split_ledger): neither is a training value.
    ledger = {"model_name": params.model_name, "accept_fresh_split": params.accept_fresh_split}
    result = run(dataset_uri=dataset_uri, store_uri=store_uri, params={**training, **ledger})
    run_id = derive_run_id(
        objects=dataset_objects(dataset_uri), split_sha256=result["split_sha256"],
        params=training, code=[code_version, installed_code()],
    )
    if kfp_run_id:
        record_kfp_run(store_uri, run_id, kfp_run_id, result["split_uri"])
    Telemetry(COMPONENT, run_id).finish(True, time.monotonic() - started)
    split.metadata.update({
        "uri": result["split_uri"], "sha256": result["split_sha256"],
        "dataset_fingerprint": result["dataset_fingerprint"], "reused": result["reused"],
        "counts": result["counts"], "run_id": run_id, "kfp_run_id": kfp_run_id,
    })
    write_artifact_json(split, result)
    return SplitOutputs(result["split_uri"], result["dataset_fingerprint"], run_id, training)

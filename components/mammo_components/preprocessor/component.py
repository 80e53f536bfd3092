"""The preprocessor's KFP components (``dataset_format`` dicom: plan, one per shard, merge; png: a
check), called by ``mammo_pipelines.pipeline``.

Each function is KFP's interface of the step (see ``mammo_components.kfp_component``)."""

from kfp import dsl

from mammo_components.kfp_component import EVAL_IMAGE, described


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
@described
def preprocess_plan(
    dataset_uri: str,
    store_uri: str,
    image_size: str,
    preprocess_shards: int,
    preprocess_set: list,
) -> list:
    """dataset_format dicom: checks the preprocessing settings and that the dataset holds DICOM
    files (in seconds, before any shard starts); returns the shard indices for the ParallelFor."""
    from mammo_components.preprocessor.step import run_plan_step

    return run_plan_step(
        dataset_uri=dataset_uri, store_uri=store_uri, image_size=image_size,
        preprocess_shards=preprocess_shards, preprocess_set=preprocess_set,
    )


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
@described
def preprocessor(
    dataset_uri: str,
    store_uri: str,
    image_size: str,
    preprocess_set: list,
    shard: int,
    shards: int,
) -> dict:
    """One shard of the DICOM conversion: decodes, windows, crops and resizes its share of the
    files that are new or changed into <store>/datasets/<name>-<hash>/png-<HxW>-<settings>/,
    recording its progress there (a retried pod goes on where it stopped). Never cached.

    Args:
        shard: This pod's shard of the DICOM files.
        shards: How many shards the files are divided into.
    """
    from mammo_components.preprocessor.step import run_step

    return run_step(
        dataset_uri=dataset_uri, store_uri=store_uri, image_size=image_size, preprocess_set=preprocess_set,
        shard=shard, shards=shards,
    )


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
@described
def preprocess_merge(
    dataset_uri: str,
    store_uri: str,
    image_size: str,
    preprocess_set: list,
    parts: list,
) -> str:
    """Writes the PNG dataset's train.csv, preprocess.json and manifest from what the shards
    recorded; returns its URI, the dataset the split builder and the trainers read.

    Args:
        parts: The shards' results, collected.
    """
    from mammo_components.preprocessor.step import run_merge_step

    return run_merge_step(
        dataset_uri=dataset_uri, store_uri=store_uri, image_size=image_size, preprocess_set=preprocess_set,
        parts=parts,
    )


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
@described
def png_dataset(dataset_uri: str) -> str:
    """dataset_format png: checks that the dataset's train.csv exists and hands the URI on."""
    from mammo_components.preprocessor.step import run_png_step

    return run_png_step(dataset_uri=dataset_uri)

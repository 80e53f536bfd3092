"""The scorer's KFP component, the one step of the ``mammo-scoring`` pipeline
(``mammo_pipelines.scoring``).

Each function is KFP's interface of the step (see ``mammo_components.kfp_component``)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from mammo_components.kfp_component import EVAL_IMAGE, described


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
@described
def scorer(
    dataset_uri: str,
    store_uri: str,
    model_name: str,
    table: str,
    params: dict,
    runtime: str,
    scores: Output[Dataset],
) -> str:
    """Scores the dataset's studies with <store>/models/<model_name>/production and publishes
    breasts.csv and images.csv under <store>/scores/<model_name>/; returns that folder.

    Args:
        table: The CSV of dataset_uri to score; empty: the one of test.csv and train.csv there.
        scores: Where the scores are (breasts.csv, images.csv) and their counts.
    """
    from mammo_components.scorer.step import run_step

    return run_step(dataset_uri=dataset_uri, store_uri=store_uri, model_name=model_name, table=table,
                    params=params, runtime=runtime, scores=scores)

"""The evaluator's KFP component (``mammo_pipelines.pipeline``).

Each function is KFP's interface of the step (see ``mammo_components.kfp_component``)."""

from kfp import dsl
from kfp.dsl import ClassificationMetrics, HTML, Input, Metrics, Model, Output

from mammo_components.kfp_component import EVAL_IMAGE, described


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
@described
def evaluator(
    dataset_uri: str,
    split_uri: str,
    store_uri: str,
    run_id: str,
    params: dict,
    model_name: str,
    promotion_metric: str,
    promotion_margin: float,
    promotion_rule: str,
    promotion_min: float,
    promotion_min_cancers: int,
    kfp_run_id: str,
    fold_models: list,
    baseline: Input[Model],
    unfreeze: Input[Model],
    best: Output[Model],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    report: Output[HTML],
) -> bool:
    """Evaluates both trainers' best checkpoints (and with folds > 1 the fold models and their
    ensemble) on val and test, publishes the report, and
    returns whether the best candidate should replace the production model (its verdict, also
    in the ``best`` Model's metadata, which the promoter step acts on). Never cached: the answer depends on the current production model.

    Args:
        baseline: The baseline trainer's Model (a candidate).
        unfreeze: The unfreeze trainer's Model (a candidate).
        best: The candidate ranked first on val by rank_metric, with its test figures, intervals,
            report and promotion verdict (promotion then compares promotion_metric, by default on
            test).
        classification: Test ROC curve and confusion matrix at the val threshold (breast level).
        report: The self-contained HTML evaluation report.
    """
    from mammo_components.evaluator.step import run_step

    return run_step(
        dataset_uri=dataset_uri, split_uri=split_uri, store_uri=store_uri, run_id=run_id, params=params,
        model_name=model_name, promotion_metric=promotion_metric, promotion_margin=promotion_margin,
        promotion_rule=promotion_rule, promotion_min=promotion_min, promotion_min_cancers=promotion_min_cancers,
        kfp_run_id=kfp_run_id, fold_models=fold_models, baseline=baseline, unfreeze=unfreeze,
        best=best, metrics=metrics, classification=classification, report=report,
    )

"""The promoter's KFP component, the last step of every training run (``mammo_pipelines.pipeline``).

Each function is KFP's interface of the step (see ``mammo_components.kfp_component``)."""

from kfp import dsl
from kfp.dsl import Input, Model, Output

from mammo_components.kfp_component import EVAL_IMAGE, described


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
@described
def promoter(
    store_uri: str,
    model_name: str,
    promotion_metric: str,
    promotion_margin: float,
    promotion_rule: str,
    promotion_min: float,
    promotion_min_cancers: int,
    dataset_fingerprint: str,
    candidate: Input[Model],
    production: Output[Model],
):
    """Records the promotion decision for the evaluator's best candidate and, when it beats
    production, copies it (verified) to <store>/models/<name>/production/ and switches the
    production manifest under the promotion lock (see the promoter's README). Runs after every
    evaluation; never cached.

    Args:
        candidate: The evaluator's best Model (first on val by rank_metric) with its verdict.
        production: The promotion decision and, when promoted, the production model's version.
    """
    from mammo_components.promoter.step import run_step

    run_step(
        store_uri=store_uri, model_name=model_name, promotion_metric=promotion_metric,
        promotion_margin=promotion_margin, promotion_rule=promotion_rule, promotion_min=promotion_min,
        promotion_min_cancers=promotion_min_cancers, dataset_fingerprint=dataset_fingerprint, candidate=candidate,
        production=production,
    )

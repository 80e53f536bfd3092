"""k-fold training's pipeline steps (``folds`` > 1, issue 24): the fold plan that publishes each
fold's split, the fold trainers (the baseline and unfreeze trainers into the fold's own run
folder) and the step that collects the fold models for the evaluator. Not a component of its
own (no ``entrypoint``): every step here runs an existing component on a fold's split."""

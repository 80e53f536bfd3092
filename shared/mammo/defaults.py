"""Defaults that several front-ends declare: the configuration model (``PipelineParams``,
``TrainConfig``), ``mammo split``'s flags and ``mammo.split.run_split``. Written once here, in a
module that imports nothing, so the command line can show them without loading pydantic."""

#: Fractions of patients in the validation and the test split.
VAL_FRAC = 0.15
TEST_FRAC = 0.15
#: Seed of the split, the sampling, the augmentation and the initialisation.
SEED = 42
#: Warm-up subset: every positive training breast plus this many times as many negatives.
WARMUP_RATIO = 3
#: Most k-fold training folds (``folds``): k models, each trained without one fold of patients.
MAX_FOLDS = 10

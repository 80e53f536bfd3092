"""A trainer on several nodes: the pipeline's trainer step launches a Kubeflow Trainer v2
``TrainJob`` (``launcher``) that runs the trainer component under torchrun on every node, waits
for it, and fills the step's KFP outputs from what the job published (``step``).

Not a component of its own (no ``entrypoint.py``): it launches the
baseline and unfreeze trainer components elsewhere. See README.md.
"""

"""mammo_pipelines: the ``mammo-training`` Kubeflow pipeline.

Compile it (``mammo pipeline compile --profile gpu|kind``), submit it to a KFP endpoint, schedule
recurring retraining, or run it on this machine through kfp.local (``mammo run``). Importing and
compiling needs the KFP SDK and mammo's torch-free modules only; the steps themselves run the
``mammo_components`` entrypoints in the project's images (see README.md). Importing the
package itself is cheap: ``mammo`` loads ``commands`` on every start.
"""

"""Scorer component: scores a dataset of studies (no labels needed) with the production model."""

from mammo_components.spec import DATASET, ComponentSpec, Flag

SPEC = ComponentSpec(
    help="Score a dataset's studies with a model; publish breast- and image-level CSVs.",
    description="The model is a production pointer (<store>/models/<name>/production), a checkpoint or a "
    "weights-only export, verified by sha256; flags use the threshold it records. The dataset's table "
    "needs patient_id, image_id, laterality (cancer is optional).",
    flags=(
        DATASET,
        Flag("--model", "model_uri", "URI", "Production pointer, checkpoint or weights-only export."),
        Flag("--out", "out_uri", "URI", "Output folder, e.g. <store>/scores/<name>/<stamp>."),
        Flag("--table", "table", "NAME", "The dataset's CSV to score (default: the one of test.csv and "
             "train.csv it holds).", required=False),
        Flag("--runtime", "runtime", "NAME", "eager (default: the computation evaluation chose the threshold on) or "
             "onnx (ONNX Runtime on the CPU, the production manifest's verified ONNX file; faster, "
             "probabilities within 1e-4 of eager).", required=False),
    ),
)

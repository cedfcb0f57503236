"""The task-type classifier: taxonomy, labelers, training with held-out evaluation, ONNX export
with a parity check, prediction through onnxruntime, and drift between prediction runs.

Nothing here touches the network, the warehouse or the settings: ``flows`` reads the warehouse,
hands in the relay annotator's completion function, and stores what comes back.
"""

from classifiers.annotator import (
    LABELING_PROMPT,
    PROMPT_VERSION,
    AnnotationReport,
    annotate,
    labeling_messages,
    parse_label,
)
from classifiers.drift import RunDistribution, compare_runs, psi, psi_terms, verdict
from classifiers.errors import (
    AnnotatorError,
    ClassifierError,
    ExportParityError,
    ModelLoadError,
    TaxonomyError,
    TrainingError,
)
from classifiers.evaluation import Evaluation, calibration, evaluate
from classifiers.export import (
    PARITY_ATOL,
    UNICODE_PROBES,
    ParityReport,
    check_parity,
    export_onnx,
    onnx_session,
    run_onnx,
)
from classifiers.features import (
    STRUCTURE_MARKERS,
    TEXT_VERSION,
    Lexicon,
    default_lexicon,
    request_text,
    request_text_json,
    text_spec,
)
from classifiers.labels import (
    LABEL_CHOICES,
    SOURCES,
    LabelRecord,
    LabelResolution,
    normalize_labels,
    resolve_labels,
)
from classifiers.model import ModelParams, build_pipeline
from classifiers.model_dir import (
    CARD_FILE,
    MODEL_FILE,
    build_card,
    classifier_version,
    read_card,
    save_classifier,
)
from classifiers.prediction import PredictedBatch, Prediction, TaskClassifier, load_classifier
from classifiers.rules import RULES, Rule, RuleMatch, rule_label, rule_labels
from classifiers.taxonomy import TIERS, TaskType, Taxonomy, load_taxonomy, taxonomy_from_dict
from classifiers.training import TrainedClassifier, train_classifier

__all__ = [
    "CARD_FILE",
    "LABELING_PROMPT",
    "LABEL_CHOICES",
    "MODEL_FILE",
    "PARITY_ATOL",
    "PROMPT_VERSION",
    "RULES",
    "SOURCES",
    "STRUCTURE_MARKERS",
    "TEXT_VERSION",
    "TIERS",
    "UNICODE_PROBES",
    "AnnotationReport",
    "AnnotatorError",
    "ClassifierError",
    "Evaluation",
    "ExportParityError",
    "LabelRecord",
    "LabelResolution",
    "Lexicon",
    "ModelLoadError",
    "ModelParams",
    "ParityReport",
    "PredictedBatch",
    "Prediction",
    "Rule",
    "RuleMatch",
    "RunDistribution",
    "TaskClassifier",
    "TaskType",
    "Taxonomy",
    "TaxonomyError",
    "TrainedClassifier",
    "TrainingError",
    "annotate",
    "build_card",
    "build_pipeline",
    "calibration",
    "check_parity",
    "classifier_version",
    "compare_runs",
    "default_lexicon",
    "evaluate",
    "export_onnx",
    "labeling_messages",
    "load_classifier",
    "load_taxonomy",
    "normalize_labels",
    "onnx_session",
    "parse_label",
    "psi",
    "psi_terms",
    "read_card",
    "request_text",
    "request_text_json",
    "resolve_labels",
    "rule_label",
    "rule_labels",
    "run_onnx",
    "save_classifier",
    "taxonomy_from_dict",
    "text_spec",
    "train_classifier",
    "verdict",
]

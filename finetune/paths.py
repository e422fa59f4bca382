"""Every file and directory the pipeline reads or writes, relative to the project root: one place each.

dvc.yaml names the same paths; tests/unit/test_dvc_yaml.py checks each stage against its code.
"""

PARAMS = "params.yaml"
PIPELINE = "dvc.yaml"
REQUIREMENTS = "requirements.txt"

# data
EMBEDDED_SAMPLE = "data/raw/finance_alpaca.parquet"  # the default input; the tiny tokenizer is trained on it
INGESTED = "data/interim/ingested.parquet"
TRAIN_DATA = "data/processed/train.parquet"
VAL_DATA = "data/processed/val.parquet"
TEST_DATA = "data/processed/test.parquet"
BASE_RESULTS = "data/eval/base.json"  # evaluate_base's metrics, answers and per-row results, read by evaluate
EVAL_ROWS = "data/eval/rows.json"  # evaluate's per-row results of base and tuned (the intervals' input)

# models
PARAMS_OK = "models/params_ok.json"  # check_params: the same bytes whenever params.yaml is valid; every stage's dep
BASE_DIR = "models/base"
SOURCE_FILE = "source.json"  # in BASE_DIR: where the weights live when they are not copied there
CHECKPOINT_DIR = "models/checkpoints"  # not a DVC output: kept across runs, cleared when train's inputs change
ADAPTER_DIR = "models/adapter"
MERGED_DIR = "models/merged"
GGUF_DIR = "models/gguf"  # one GGUF per export.gguf entry and the Ollama Modelfile

# metrics (small, in git)
DATA_METRICS = "metrics/data.json"
LIVE_DIR = "metrics/train_live"  # dvclive's per-step logs, drawn by `dvc plots show` and the report
LIVE_PLOTS = "metrics/train_live/plots/metrics"  # its TSVs (train; eval/ for the eval series)
TRAIN_METRICS = "metrics/train.json"
TRAIN_SPEED = "metrics/train_speed.json"  # seconds, tokens/s, memory: differ run to run, kept apart
EVAL_METRICS = "metrics/eval.json"
SAMPLES = "metrics/samples.jsonl"
SAMPLES_PLOT = "metrics/samples.json"  # the same rows as a JSON list: `dvc plots` reads no JSONL
GENERATION = "metrics/generation.json"  # every decoding knob both models answered with
MERGE_METRICS = "metrics/merge.json"
EXPORT_METRICS = "metrics/export.json"
REPORT = "metrics/report.html"
COMPARE_REPORT = "report_compare.html"  # `python -m stages.report --compare A B`, not a DVC output

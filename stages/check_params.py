"""check_params: validate every section of params.yaml before any stage runs -> models/params_ok.json.

Every other stage depends on its output, so DVC runs it first whenever a param changed, and a refused
param stops `dvc repro` / `dvc exp run` here, before DVC removes any other stage's outputs. Valid params
always give the same bytes, so nothing downstream reruns because of this stage.
"""

from finetune import config, errors, files, paths


def main() -> None:
    config.load("lr", "data", "prepare", "model", "train", "evaluate", "merge", "export")
    files.write_json(paths.PARAMS_OK, {"params": "valid"})  # the same bytes for any valid params
    print(f"check_params: {paths.PARAMS} is valid -> {paths.PARAMS_OK}")


if __name__ == "__main__":
    errors.run(main)

"""The pipeline's stages, one module per dvc.yaml stage, run by `dvc repro` as `python -m stages.<name>`.

Nothing imports these modules (tests/unit/test_layout.py checks it): what they do lives in `finetune`.
dvc runs whichever `python` comes first on PATH, so before a stage imports pandas or torch, this
entry point checks that it is the project's environment and says how to get there if not.
"""

from finetune import environment

environment.check()

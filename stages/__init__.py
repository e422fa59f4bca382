"""The pipeline's stages, run by `dvc repro` as `python -m stages.<name>`.

dvc runs whichever `python` comes first on PATH: before any stage imports pandas or torch,
check that it is the project's environment and say how to get there if not.
"""

from stages import environment

environment.check()

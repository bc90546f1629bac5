"""llmkit: prompts as code."""

# The one place the version is written: pyproject.toml reads it (setuptools' dynamic version),
# `llmkit --version` prints it, `llmkit init` pins the GitHub Action and the pre-commit hook to
# the tag `v<version>`, and a release tags the commit that sets it.
__version__ = "0.1.0"

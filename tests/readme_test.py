"""The README's Python example runs as written (docs match the code)."""

import os
import re

import pytest


@pytest.mark.slow
def test_readme_python_example_runs():
    text = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})

"""The README's Python example runs as written (on the tiny demo models)."""

import re
from pathlib import Path


def test_readme_python_example_runs(capsys):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "no python example in the README"
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
    assert "(1, 1024, 64) (3, 729, 32)" in capsys.readouterr().out

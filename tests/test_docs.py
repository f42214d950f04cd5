"""The repository documents itself: every op's contract is in docs/ops.md, and the code and the
documents cite only files that exist in the repository, never an outside tracker."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import stpriv_ops

ROOT = Path(__file__).resolve().parents[1]
KERNEL_OPS = ["masked_attention", "masked_mean", "gumbel_keep", "gumbel_topk", "topk_keep", "gather_tokens",
              "scatter_tokens"]


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / line for line in out.stdout.splitlines()]


def test_every_kernel_op_has_its_contract_in_docs():
    headings = [line for line in (ROOT / "docs" / "ops.md").read_text().splitlines() if line.startswith("## ")]
    for op in KERNEL_OPS:
        assert op in stpriv_ops.__all__
        assert any(re.search(rf"\b{op}\b", heading) for heading in headings), f"docs/ops.md has no section for {op}"


def test_cited_documents_exist_and_no_tracker_references():
    files = _tracked("*.py", "*.cpp", "*.h", "*.md", "*.sh")
    assert files, "git ls-files found nothing"
    for path in files:
        if path == Path(__file__).resolve():
            continue  # this test names what it looks for
        text = path.read_text()
        for cited in re.findall(r"\b((?:docs|benchmarks)/[\w./-]+\.md)\b", text):
            assert (ROOT / cited).is_file(), f"{path.relative_to(ROOT)} cites {cited}, which does not exist"
        assert "DESIGN.md" not in text, f"{path.relative_to(ROOT)} cites DESIGN.md, which is not in the repository"
        if path.suffix == ".md":
            hit = re.search(r"\b[Ii]ssues? #?\d+", text)
            assert not hit, f"{path.relative_to(ROOT)} refers to a tracker ({hit.group(0)!r}): say what was measured"

